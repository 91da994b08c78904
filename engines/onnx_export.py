"""Export u(x, s, t, y) to ONNX with a dynamic batch axis (shared by the onnxruntime and tensorrt engines)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import warnings
from pathlib import Path

import torch

from engines.base import EngineError, example_inputs
from flowmap.checkpoint import Model

INPUTS, OUTPUT = ("x", "s", "t", "y"), "u"
OPSET = 18


def _export(net: torch.nn.Module, inputs: tuple, path: Path, exporter: str) -> None:
    """torch.onnx.export with a dynamic batch axis: the dynamo exporter (opset OPSET) or the legacy
    TorchScript-based one (opset 17)."""
    if exporter == "dynamo":
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        how = {"dynamic_shapes": tuple({0: batch} for _ in INPUTS), "opset_version": OPSET, "verbose": False}
    else:
        how = {"dynamic_axes": {name: {0: "batch"} for name in (*INPUTS, OUTPUT)}, "opset_version": 17}
    names = {"input_names": list(INPUTS), "output_names": [OUTPUT]}
    torch.onnx.export(net, inputs, str(path), **names, dynamo=exporter == "dynamo", **how)


EXPORTERS = ("dynamo", "legacy")


def export_onnx(model: Model, exporter: str = "dynamo", metadata: dict | None = None) -> bytes:
    """The model as ONNX bytes (inputs x, s, t, y; output u; batch axis dynamic), metadata attached."""
    import onnx

    if exporter not in EXPORTERS:
        raise EngineError(f"unknown ONNX exporter {exporter!r}; choose one of {sorted(EXPORTERS)}")
    net = model.net.cpu().eval()
    inputs = example_inputs(model, 2)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" notes
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "model.onnx"
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the dynamo exporter prints progress
                _export(net, inputs, path, exporter)
        except Exception as e:  # exporter failures come in many types
            raise EngineError(
                f"model {model.name!r}: ONNX export ({exporter}) failed: {type(e).__name__}: {e}"
            ) from e
        proto = onnx.load(str(path))  # folds external data (if any) back in
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return proto.SerializeToString()


def onnx_metadata(data: bytes) -> dict[str, str]:
    """metadata_props of an ONNX model, as a dict."""
    import onnx

    return {p.key: p.value for p in onnx.load_from_string(data).metadata_props}
