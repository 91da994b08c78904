"""Open Inference Protocol v2 (KServe / Triton) routes, JSON and the binary tensor extension.

Inputs (all optional, one element each unless noted): seed INT64, steps INT32, num_samples INT32,
class_label INT32 ([1] or [num_samples]), guidance_scale FP32. Outputs: images UINT8 [N, H, W, C]
(image models) and samples FP32 [N, *shape]. Errors: {"error": message} with 400 for bad input.
"""

from __future__ import annotations

import json
import math

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from server import http
from server.encode import to_uint8_nhwc
from server.service import GenParams, GenResult, InvalidInput, ModelEntry, Service

DTYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
INPUTS = {
    "seed": ("INT64", [1]),
    "steps": ("INT32", [1]),
    "num_samples": ("INT32", [1]),
    "class_label": ("INT32", [-1]),
    "guidance_scale": ("FP32", [1]),
}
HEADER = "inference-header-content-length"

_tensor = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {"type": "string"},
        "parameters": {"type": "object"},
        "data": {"type": "array"},
    },
}
INFER_SCHEMA = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "inputs": {"type": "array", "items": _tensor},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
            },
        },
    },
}


def outputs_of(e: ModelEntry) -> dict[str, tuple[str, list[int]]]:
    outs = {"samples": ("FP32", [-1, *e.shape])}
    if e.image:
        c, h, w = e.shape
        outs["images"] = ("UINT8", [-1, h, w, c])
    return outs


def metadata(e: ModelEntry) -> dict:
    return {
        "name": e.name,
        "versions": ["1"],
        "platform": f"flowmap_{e.info['engine']}",
        "inputs": [{"name": k, "datatype": d, "shape": s} for k, (d, s) in INPUTS.items()],
        "outputs": [{"name": k, "datatype": d, "shape": s} for k, (d, s) in outputs_of(e).items()],
    }


def split_body(raw: bytes, header_len: str | None) -> tuple[dict, bytes]:
    """(JSON header, binary tail) of an infer request."""
    try:
        n = int(header_len) if header_len is not None else len(raw)
        if not 0 <= n <= len(raw):
            raise ValueError
        body = json.loads(raw[:n])
    except (ValueError, UnicodeDecodeError):
        msg = "request body is not valid JSON (or Inference-Header-Content-Length is wrong)"
        raise InvalidInput(msg) from None
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise InvalidInput("request must be a JSON object with an 'inputs' list", "inputs")
    return body, raw[n:]


def _flatten(data) -> list:
    out, stack = [], [data]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(reversed(v))
        else:
            out.append(v)
    return out


def decode_tensor(t: dict, binary: bytes, offset: int) -> tuple[np.ndarray, int]:
    """One input tensor as a flat numpy array; returns the new offset into the binary tail."""
    name, dtype = t.get("name"), DTYPES.get(t.get("datatype"))
    shape = t.get("shape")
    if dtype is None:
        raise InvalidInput(f"input {name!r}: unsupported datatype {t.get('datatype')!r}", name)
    if not isinstance(shape, list) or not all(isinstance(d, int) and 0 <= d <= 4096 for d in shape):
        raise InvalidInput(f"input {name!r}: shape must be a list of sizes 0..4096", name)
    size = math.prod(shape)
    nbytes = (t.get("parameters") or {}).get("binary_data_size")
    try:
        if nbytes is not None:
            arr = np.frombuffer(binary[offset : offset + int(nbytes)], dtype=dtype)
            offset += int(nbytes)
        else:
            arr = np.asarray(_flatten(t.get("data", [])), dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        raise InvalidInput(f"input {name!r}: data does not fit datatype {t.get('datatype')}", name) from None
    if arr.size != size:
        raise InvalidInput(f"input {name!r}: {arr.size} values for shape {shape}", name)
    return arr.reshape(-1), offset


def _scalar(arrays: dict, name: str, kind):
    if name not in arrays:
        return None
    a = arrays[name]
    if a.size != 1:
        raise InvalidInput(f"input {name!r} must hold one value, got {a.size}", name)
    v = a[0].item()
    if kind is int and (isinstance(v, float) and not v.is_integer()):
        raise InvalidInput(f"input {name!r} must be an integer", name)
    return kind(v) if math.isfinite(float(v)) else None


def to_params(model: str, body: dict, binary: bytes) -> GenParams:
    arrays, offset = {}, 0
    for t in body["inputs"]:
        if not isinstance(t, dict) or t.get("name") not in INPUTS:
            raise InvalidInput(
                f"unknown input {t.get('name') if isinstance(t, dict) else t!r}; known: {', '.join(INPUTS)}",
                "inputs",
            )
        arrays[t["name"]], offset = decode_tensor(t, binary, offset)
    labels = arrays.get("class_label")
    label = None if labels is None else (int(labels[0]) if labels.size == 1 else [int(v) for v in labels])
    n = _scalar(arrays, "num_samples", int)
    steps, seed, w = (
        _scalar(arrays, "steps", int),
        _scalar(arrays, "seed", int),
        _scalar(arrays, "guidance_scale", float),
    )
    return GenParams(model, steps, 1 if n is None else n, seed, label, w, None, "tensor")


def requested_outputs(e: ModelEntry, body: dict) -> list[tuple[str, bool]]:
    """[(name, binary)]: what the client asked for, default all outputs as JSON (or binary if asked)."""
    avail = outputs_of(e)
    default_bin = bool((body.get("parameters") or {}).get("binary_data_output", False))
    asked = body.get("outputs") or [{"name": k} for k in avail]
    out = []
    for o in asked:
        name = o.get("name") if isinstance(o, dict) else None
        if name not in avail:
            raise InvalidInput(f"unknown output {name!r}; available: {', '.join(avail)}", "outputs")
        out.append((name, bool((o.get("parameters") or {}).get("binary_data", default_bin))))
    return out


def encode_outputs(e: ModelEntry, x, wanted: list[tuple[str, bool]]) -> tuple[list[dict], bytes]:
    tensors = {
        "samples": lambda: x,
        "images": lambda: to_uint8_nhwc(x),
    }
    specs, blobs = [], []
    for name, binary in wanted:
        arr = np.ascontiguousarray(tensors[name]())
        spec = {"name": name, "datatype": outputs_of(e)[name][0], "shape": list(arr.shape)}
        if binary:
            blobs.append(arr.tobytes())
            spec["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            spec["data"] = arr.reshape(-1).tolist()
        specs.append(spec)
    return specs, b"".join(blobs)


def router(service: Service, auth) -> APIRouter:
    r = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])

    @r.get("")
    async def server_metadata():
        return {"name": "flowmap", "version": "0.1.0", "extensions": ["binary_tensor_data"]}

    @r.get("/health/live")
    async def live():
        return {"live": True}

    @r.get("/health/ready")
    async def ready():
        return JSONResponse({"ready": service.ready}, 200 if service.ready else 503)

    @r.get("/models/{name}", dependencies=[Depends(auth)])
    async def model_metadata(name: str):
        return metadata(_entry(service, name))

    @r.get("/models/{name}/ready")
    async def model_ready(name: str):
        _entry(service, name)
        return JSONResponse({"name": name, "ready": service.ready}, 200 if service.ready else 503)

    @r.post(
        "/models/{name}/infer",
        dependencies=[Depends(auth)],
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": INFER_SCHEMA}}}
        },
    )
    async def infer(name: str, request: Request):
        return await _infer(service, name, request)

    return r


def _entry(service: Service, name: str) -> ModelEntry:
    return service.entry(name or "")


async def _infer(service: Service, name: str, request: Request) -> Response:
    e = _entry(service, name)
    body, binary = split_body(await request.body(), request.headers.get(HEADER))
    p = to_params(name, body, binary)
    wanted = requested_outputs(e, body)
    p.steps = p.steps if p.steps is not None else service.settings.default_steps
    return await http.generate(service, p, request, lambda r: infer_response(e, body, r, wanted))


def infer_response(e: ModelEntry, body: dict, result: GenResult, wanted: list[tuple[str, bool]]) -> Response:
    specs, blob = encode_outputs(e, result.x, wanted)
    head = {
        "model_name": e.name,
        "model_version": "1",
        "outputs": specs,
        "parameters": {"steps": result.steps, "seed": result.seed},
    }
    if isinstance(body.get("id"), str):
        head["id"] = body["id"]
    if not blob:
        return JSONResponse(head)
    header = json.dumps(head).encode()
    return Response(
        header + blob,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
