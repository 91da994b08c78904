import importlib.util
import json

import pytest
import torch

from engines import load_artifact, load_engine
from engines.artifacts import export_artifact, sha256, sidecar
from engines.base import EngineError, example_inputs
from engines.cli import main
from flowmap.checkpoint import load_model

KINDS = [
    pytest.param(("torchscript", "m.pt"), id="torchscript"),
    pytest.param(
        ("onnxruntime", "m.onnx"),
        id="onnxruntime",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime not installed"
        ),
    ),
]


@pytest.fixture(params=KINDS)
def exported(request, tiny, tmp_path_factory):
    engine, name = request.param
    out = tmp_path_factory.mktemp(engine) / name
    export_artifact(tiny, engine, out)
    return engine, out


def test_round_trip_without_and_with_checkpoint(tiny, exported):
    engine_name, path = exported
    meta = json.loads(sidecar(path).read_text())
    assert meta["artifact_sha256"] == sha256(path) and meta["source_sha256"] == sha256(tiny.path)
    assert meta["config"] == tiny.config
    inputs = example_inputs(tiny, 5, seed=3)
    with torch.inference_mode():
        ref = tiny.net(*inputs)
    for engine in (load_artifact(path), load_artifact(path, model=tiny), load_engine(str(path), tiny)):
        assert engine.name == engine_name
        torch.testing.assert_close(engine(*inputs), ref, rtol=1e-4, atol=1e-5)


def test_tampered_artifact_is_refused(exported, tmp_path):
    _, path = exported
    bad = tmp_path / path.name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    sidecar(bad).write_text(sidecar(path).read_text())
    with pytest.raises(EngineError, match="checksum mismatch"):
        load_artifact(bad)


def test_sidecar_config_edit_is_refused(exported, tmp_path):
    """Editing the config in the sidecar (even with a fixed-up checksum) no longer matches the artifact."""
    _, path = exported
    bad = tmp_path / path.name
    bad.write_bytes(path.read_bytes())
    meta = json.loads(sidecar(path).read_text())
    meta["config"]["arch"]["width"] = 64
    sidecar(bad).write_text(json.dumps(meta))
    with pytest.raises(EngineError, match="config inside the artifact does not match"):
        load_artifact(bad)


def test_other_checkpoint_is_refused(exported, tmp_path, make_checkpoint):
    _, path = exported
    other = load_model(str(make_checkpoint(tmp_path / "other.safetensors", seed=1)))
    with pytest.raises(EngineError, match="different checkpoint"):
        load_artifact(path, model=other)
    bigger = dict(other.config, name="tiny2")
    other.config = bigger
    with pytest.raises(EngineError, match="different config"):
        load_artifact(path, model=other)


def test_missing_sidecar_is_refused(exported, tmp_path):
    _, path = exported
    lone = tmp_path / path.name
    lone.write_bytes(path.read_bytes())
    with pytest.raises(EngineError, match="missing .*json"):
        load_artifact(lone)


def test_export_refuses_wrong_suffix(tiny, tmp_path):
    with pytest.raises(EngineError, match=r"must end in \.onnx"):
        export_artifact(tiny, "onnxruntime", tmp_path / "m.pt")
    with pytest.raises(EngineError, match="no exportable artifact"):
        export_artifact(tiny, "compile", tmp_path / "m.pt")


def test_cli_export(tiny_path, tmp_path, capsys):
    out = tmp_path / "cli.pt"
    assert main(["export", "--model", str(tiny_path), "--engine", "torchscript", "--out", str(out)]) == 0
    assert sidecar(out).is_file() and load_artifact(out).name == "torchscript"
    assert (
        main(
            [
                "export",
                "--model",
                str(tmp_path / "nope.safetensors"),
                "--engine",
                "torchscript",
                "--out",
                str(tmp_path / "x.pt"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.safetensors" in err[0]
