"""Engines on users' models (tests/usermodels.py): compiled and exported engines pass parity with eager on
a DiT-style model; a module a trace cannot capture is refused by the parity check, naming the model."""

from __future__ import annotations

import pytest
import torch
import usermodels as um

from engines import EngineError, load_engine
from engines.artifacts import export_artifact
from flowmap.checkpoint import load_model
from flowmap.generate import generate
from flowmap.samplers import make_noise

torch.set_num_threads(1)


@pytest.mark.parametrize("engine", ["torchscript", "onnxruntime"])
def test_dit_engines_pass_parity(engine):
    if engine == "onnxruntime":
        pytest.importorskip("onnxruntime")
    model = load_model("usermodels:tiny_dit")
    eng = load_engine(engine, model, buckets=(1, 4))  # parity-checked against eager at load
    x, s, t, y = make_noise(3, [1, 8, 8], 0), torch.tensor([1.0, 0.5, 0.2]), torch.zeros(3), torch.arange(3)
    assert torch.allclose(eng(x, s, t, y), model.net(x, s, t, y), atol=1e-4)


def test_a_module_a_trace_cannot_capture_fails_parity_naming_the_model():
    model = load_model("usermodels:numpy_velocity")  # passes the load checks: eager is right
    with pytest.raises(EngineError, match="model 'numpy-v': engine 'torchscript' fails parity"):
        load_engine("torchscript", model, buckets=(1, 4))


def test_exported_artifact_of_a_user_model_serves_the_exact_answer(tmp_path):
    """`flowmap export` of the analytic flow map, loaded back as an artifact engine: still exact."""
    model = load_model("usermodels:gauss_flow_map")
    export_artifact(model, "torchscript", tmp_path / "g.pt", buckets=(1, 8))
    eng = load_engine(str(tmp_path / "g.pt"), model, buckets=(1, 8))
    z = make_noise(8, [2], 0)
    assert torch.allclose(
        generate(model.__class__(eng, model.config, model.path), 2, z), um.M + um.SD * z, atol=1e-5
    )
