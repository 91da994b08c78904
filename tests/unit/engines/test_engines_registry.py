import importlib.util
import subprocess
import sys

import pytest

import engines
from engines import base


def test_import_never_loads_optional_runtimes():
    code = (
        "import sys, engines, engines.base, engines.cli, engines.eager; "
        "bad = [m for m in ('tensorrt', 'onnxruntime', 'onnx', 'triton') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_engine_is_refused(tiny):
    with pytest.raises(engines.EngineError, match="unknown engine 'nope'"):
        engines.load_engine("nope", tiny)


def test_every_registered_engine_names_a_class_path():
    for name, target in engines.ENGINES.items():
        module, cls = target.split(":")
        assert importlib.util.find_spec(module) is not None, name
        assert cls


def test_default_engine_is_first_available(monkeypatch):
    assert engines.default_engine("cpu") == next(n for n in base.CPU_PREFERENCE if base.available(n))
    monkeypatch.setitem(base.REQUIRES, "onnxruntime", "surely_not_installed_pkg")
    assert engines.default_engine("cpu") == "torchscript"
    assert engines.default_engine("cuda") in base.CUDA_PREFERENCE
    monkeypatch.setitem(base.REQUIRES_CUDA, "compile", "surely_not_installed_pkg")
    assert engines.default_engine("cuda") == "eager"


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_missing_gives_clear_error(tiny):
    with pytest.raises(engines.EngineError, match=r"TensorRT is not installed \(pip install tensorrt\)"):
        engines.load_engine("tensorrt", tiny, device="cpu")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_export_missing_gives_clear_error(tiny, tmp_path):
    from engines.artifacts import export_artifact

    with pytest.raises(engines.EngineError, match="TensorRT is not installed"):
        export_artifact(tiny, "tensorrt", tmp_path / "m.plan")
    assert not (tmp_path / "m.plan").exists()
