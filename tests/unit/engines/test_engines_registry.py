import importlib.util
import inspect
import subprocess
import sys

import pytest
import torch

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


def test_every_registered_name_resolves_to_its_engine_class():
    """Each entry imports to a class of the engine protocol that reports the name it is listed under."""
    assert {"eager", "torchscript", "compile", "onnxruntime", "tensorrt"} <= set(engines.ENGINES)
    for name, target in engines.ENGINES.items():
        module, attr = target.split(":")
        cls = base.engine_class(name)
        assert inspect.isclass(cls), (name, cls)
        assert (cls.__module__, cls.__qualname__) == (module, attr), name
        assert cls.name == name, (name, cls.name)
        # an engine class itself defines the call and warm-up (not just `object`'s / `type`'s)
        for method in ("__call__", "warmup"):
            assert any(method in vars(k) for k in cls.__mro__ if k is not object), (name, method)
        params = inspect.signature(cls).parameters
        assert {"model", "device", "buckets"} <= set(params), (name, list(params))


def test_a_registry_entry_naming_a_missing_class_fails_to_resolve(monkeypatch):
    monkeypatch.setitem(base.ENGINES, "ghost", "engines.eager:NoSuchEngine")
    with pytest.raises(engines.EngineError, match="'ghost' cannot be imported.*NoSuchEngine"):
        base.engine_class("ghost")


LOADABLE_ON_CPU = [
    "eager",
    "torchscript",
    pytest.param(
        "onnxruntime",
        marks=pytest.mark.skipif(not base.available("onnxruntime"), reason="onnxruntime not installed"),
    ),
]


@pytest.mark.parametrize("name", LOADABLE_ON_CPU)
def test_loading_a_registered_name_gives_a_working_engine(tiny, name):
    """load_engine(name) builds the registered class, and the result computes the model's network."""
    engine = engines.load_engine(name, tiny, buckets=(2, 4))
    assert type(engine) is base.engine_class(name)
    assert isinstance(engine, engines.Engine) and engine.name == name
    for batch in (1, 3, 6):  # padded to a bucket, and split over the largest one
        inputs = engines.example_inputs(tiny, batch, seed=100 + batch)
        with torch.inference_mode():
            want = tiny.net(*inputs)
        got = engine(*inputs)
        assert got.shape == (batch, *tiny.shape) and got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    x, s, t, y = engines.example_inputs(tiny, 2, seed=1)
    assert not torch.allclose(engine(x, s, t, y), engine(x + 1, s, t, y))  # it reads its input


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
