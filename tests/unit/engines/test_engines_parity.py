import importlib.util
import textwrap

import pytest
import torch

from engines import base
from engines.base import EngineError, check_parity, example_inputs, load_engine

has_ort = importlib.util.find_spec("onnxruntime") is not None


@pytest.mark.parametrize(
    "name",
    [
        "eager",
        "torchscript",
        pytest.param(
            "onnxruntime", marks=pytest.mark.skipif(not has_ort, reason="onnxruntime not installed")
        ),
    ],
)
def test_engine_matches_eager(tiny, name):
    engine = load_engine(name, tiny, buckets=(1, 4))  # load_engine already checked parity
    assert engine.name == name and engine.dtype == torch.float32
    assert check_parity(engine, tiny) <= base.TOLERANCE[torch.float32]
    engine.warmup()


def test_onnxruntime_runs_one_thread_all_optimisations(tiny):
    pytest.importorskip("onnxruntime")
    engine = load_engine("onnxruntime", tiny, buckets=(2,))
    assert engine.providers == ["CPUExecutionProvider"]
    import onnxruntime as ort

    opts = engine.session.get_session_options()
    assert opts.intra_op_num_threads == 1
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


@pytest.mark.slow
def test_compile_engine_one_bucket(tiny, tmp_path):
    engine = load_engine("compile", tiny, buckets=(2,), cache_dir=tmp_path / "inductor")
    inputs = example_inputs(tiny, 1, seed=7)  # padded to the bucket
    with torch.inference_mode():
        ref = tiny.net(*inputs)
    torch.testing.assert_close(engine(*inputs), ref, rtol=1e-4, atol=1e-5)
    assert any((tmp_path / "inductor").rglob("*")), "compiled artifacts were not cached"


BROKEN = textwrap.dedent("""
    import torch
    from engines.eager import EagerEngine

    class Noisy(EagerEngine):
        name = "noisy"

        def __call__(self, x, s, t, y):
            u = super().__call__(x, s, t, y)
            return u + self.scale * u.abs().max()

    class NoisyOff(Noisy):
        scale = 1e-2

    class NoisyNaN(Noisy):
        scale = float("nan")

    class NoisyTiny(Noisy):
        scale = 1e-7
""")


@pytest.fixture
def broken(tmp_path, monkeypatch):
    (tmp_path / "broken_engines.py").write_text(BROKEN)
    monkeypatch.syspath_prepend(str(tmp_path))
    for cls in ("NoisyOff", "NoisyNaN", "NoisyTiny"):
        monkeypatch.setitem(base.ENGINES, cls, f"broken_engines:{cls}")


@pytest.mark.parametrize(
    "name,match", [("NoisyOff", r"relative error 0\.0[0-9]+ > 0\.0001"), ("NoisyNaN", "relative error nan")]
)
def test_engine_failing_parity_is_refused(tiny, broken, name, match):
    with pytest.raises(EngineError, match=match) as err:
        load_engine(name, tiny, buckets=(1, 4))
    assert "refusing to serve" in str(err.value)


def test_engine_within_tolerance_is_accepted(tiny, broken):
    assert load_engine("NoisyTiny", tiny, buckets=(1, 4)).name == "noisy"
