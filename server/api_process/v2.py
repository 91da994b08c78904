"""Open Inference Protocol v2 (KServe / Triton) routes, JSON and the binary tensor extension.

Inputs (all optional, one element each unless noted): seed INT64, steps INT32, num_samples INT32,
class_label INT32 ([1] or [num_samples]), guidance_scale FP32; request parameter "sampler" (flowmap |
consistency; default: the model's) and "steer" (the v1 option's object; server.common.steer). Outputs: images
UINT8 [N, H, W, C] (image models) and samples FP32 [N, *shape]. Errors: {"error": message} with 400 for
bad input.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from server.api_process import http
from server.api_process.encode import to_uint8_nhwc
from server.api_process.protocol import SAMPLERS, STATUSES, VERSION, steps_for
from server.api_process.schemas import V2Error
from server.api_process.service import GenParams, GenResult, InvalidInput, ModelEntry, Service
from server.common import steer as steering
from server.common.steer import SteerParams

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
HEADER = "Inference-Header-Content-Length"  # Starlette looks headers up case-insensitively

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


INFER_RESPONSE = {
    "type": "object",
    "required": ["model_name", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "outputs": {"type": "array", "items": _tensor},
    },
}


def _errors(*statuses: int) -> dict:
    """OpenAPI responses: these error statuses, each with the {"error": message} body."""
    return {s: {"model": V2Error, "description": STATUSES[s]} for s in statuses}


def outputs_of(e: ModelEntry) -> dict[str, tuple[str, list[int]]]:
    outs = {"samples": ("FP32", [-1, *e.spec.shape])}
    if e.spec.image:
        c, h, w = e.spec.shape
        outs["images"] = ("UINT8", [-1, h, w, c])
    return outs


def metadata(e: ModelEntry) -> dict:
    return {
        "name": e.spec.name,
        "versions": ["1"],
        "platform": f"flowmap_{e.spec.engine}",
        "inputs": [{"name": k, "datatype": d, "shape": s} for k, (d, s) in INPUTS.items()],
        "outputs": [{"name": k, "datatype": d, "shape": s} for k, (d, s) in outputs_of(e).items()],
    }


def _show(v) -> str:
    """A client's value for an error message: its repr, cut short (names and values may be anything)."""
    text = repr(v)
    return text if len(text) <= 64 else text[:61] + "..."


_DIGITS = re.compile(r"[0-9]{1,12}")  # ASCII only: int() would also take " 5" or Arabic-Indic digits


def split_body(raw: bytes, header_len: str | None) -> tuple[dict, bytes]:
    """(JSON header, binary tail) of an infer request, the header's shape checked."""
    n = len(raw)
    if header_len is not None:
        if not _DIGITS.fullmatch(header_len) or int(header_len) > len(raw):
            msg = f"{HEADER} must be a byte count 0..{len(raw)} (the body's length), got {_show(header_len)}"
            raise InvalidInput(msg, HEADER)
        n = int(header_len)
    try:
        body = json.loads(raw[:n])
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        msg = f"request body is not valid JSON or nested too deeply (or {HEADER} is wrong)"
        raise InvalidInput(msg) from None
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise InvalidInput("request must be a JSON object with an 'inputs' list", "inputs")
    if "id" in body and not (isinstance(body["id"], str) and _utf8(body["id"])):
        raise InvalidInput(f"request 'id' must be a string of UTF-8 text, got {_show(body['id'])}", "id")
    parameters(body, "request")
    return body, raw[n:]


def _utf8(text: str) -> bool:
    """False for a string holding a lone surrogate ("\\ud800" in the JSON): the response echoes the id, and
    UTF-8 cannot encode it."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def parameters(obj: dict, where: str) -> dict:
    """The 'parameters' object of the request, an input or an output ({} when absent or null)."""
    p = obj.get("parameters")
    if p is None:
        return {}
    if not isinstance(p, dict):
        raise InvalidInput(f"{where}: 'parameters' must be a JSON object, got {_show(p)}", "parameters")
    return p


def _flag(params: dict, key: str, default: bool, where: str) -> bool:
    v = params.get(key, default)
    if not isinstance(v, bool):
        raise InvalidInput(f"{where}: parameter {key!r} must be true or false, got {_show(v)}", key)
    return v


def _flatten(data) -> list:
    out, stack = [], [data]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(reversed(v))
        else:
            out.append(v)
    return out


def _json_values(name: str, datatype: str, data) -> np.ndarray:
    """JSON 'data' (flat or nested row-major) as an array, each value of the datatype's JSON kind: true/false
    for BOOL, integers within range for INT*/UINT* (no 1.7, "5" or true), numbers for FP* (no strings or
    booleans, no integer beyond float range; NaN/Infinity tokens parse, and the input's own check refuses
    them with its name)."""
    if not isinstance(data, list):
        raise InvalidInput(f"input {name!r}: 'data' must be a list (or give binary_data_size)", name)
    values, dtype = _flatten(data), np.dtype(DTYPES[datatype])
    if dtype.kind == "b":
        ok = all(type(v) is bool for v in values)
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        ok = all(type(v) is int and info.min <= v <= info.max for v in values)
    else:
        ok = all(type(v) is float or (type(v) is int and abs(v) < 2**1000) for v in values)
    if not ok:
        raise InvalidInput(f"input {name!r}: data does not fit datatype {datatype}", name)
    with np.errstate(over="ignore"):  # 1e300 as FP32 is inf, refused by the input's own check
        return np.array(values, dtype=dtype)


def decode_tensor(t: dict, binary: bytes, offset: int) -> tuple[np.ndarray, int]:
    """One input tensor (its name already checked) as a flat numpy array; returns the new offset into the
    binary tail."""
    name, datatype, shape = t["name"], t.get("datatype"), t.get("shape")
    if not isinstance(datatype, str) or datatype not in DTYPES:
        raise InvalidInput(f"input {name!r}: unsupported datatype {_show(datatype)}", name)
    if (
        not isinstance(shape, list)
        or len(shape) > 8
        or not all(type(d) is int and 0 <= d <= 4096 for d in shape)
    ):
        raise InvalidInput(f"input {name!r}: shape must be a list of at most 8 sizes 0..4096", name)
    size = math.prod(shape)
    nbytes = parameters(t, f"input {name!r}").get("binary_data_size")
    if nbytes is None:
        arr = _json_values(name, datatype, t.get("data"))
    else:
        itemsize, left = np.dtype(DTYPES[datatype]).itemsize, len(binary) - offset
        if type(nbytes) is not int or not 0 <= nbytes <= left:
            msg = f"input {name!r}: binary_data_size must be a byte count 0..{left} (the binary bytes left)"
            raise InvalidInput(msg, name)
        if "data" in t:
            raise InvalidInput(f"input {name!r}: give 'data' or binary_data_size, not both", name)
        if nbytes != size * itemsize:
            msg = f"input {name!r}: binary_data_size {nbytes} is not {size} x {itemsize} bytes ({datatype})"
            raise InvalidInput(msg, name)
        arr, offset = np.frombuffer(binary, DTYPES[datatype], count=size, offset=offset), offset + nbytes
    if arr.size != size:
        raise InvalidInput(f"input {name!r}: {arr.size} values for shape {shape}", name)
    return arr.reshape(-1), offset


def _ints(arrays: dict, name: str) -> list[int] | None:
    """An input's values as exact integers: any integer datatype, or a float one holding whole finite
    numbers (class 1.7, NaN or Infinity is an error, never a silent class 1 or a default)."""
    if name not in arrays:
        return None
    a = arrays[name]
    if a.dtype.kind == "b":
        raise InvalidInput(f"input {name!r} must be an integer, not BOOL", name)
    if a.dtype.kind == "f" and not (np.isfinite(a).all() and (a == np.trunc(a)).all()):
        raise InvalidInput(f"input {name!r} must hold whole numbers, got {_show(a[:4].tolist())}", name)
    return [int(v) for v in a.tolist()]


def _one(values: list | None, name: str):
    if values is None:
        return None
    if len(values) != 1:
        raise InvalidInput(f"input {name!r} must hold one value, got {len(values)}", name)
    return values[0]


def _float(arrays: dict, name: str) -> float | None:
    if name not in arrays:
        return None
    a = arrays[name]
    if a.dtype.kind == "b":
        raise InvalidInput(f"input {name!r} must be a number, not BOOL", name)
    v = float(_one(a.tolist(), name))
    if not math.isfinite(v):
        raise InvalidInput(f"input {name!r} must be finite, got {v}", name)
    return v


def to_params(model: str, body: dict, binary: bytes) -> GenParams:
    arrays, offset = {}, 0
    for t in body["inputs"]:
        name = t.get("name") if isinstance(t, dict) else None
        if not isinstance(name, str) or name not in INPUTS:
            shown = _show(name if isinstance(t, dict) else t)
            raise InvalidInput(f"unknown input {shown}; known: {', '.join(INPUTS)}", "inputs")
        if name in arrays:
            raise InvalidInput(f"input {name!r} given twice", name)
        arrays[name], offset = decode_tensor(t, binary, offset)
    if offset != len(binary):
        msg = f"{len(binary) - offset} bytes after the JSON header belong to no input's binary_data_size"
        raise InvalidInput(msg, HEADER)
    labels = _ints(arrays, "class_label")
    label = labels[0] if labels is not None and len(labels) == 1 else labels
    n = _one(_ints(arrays, "num_samples"), "num_samples")
    steps, seed = _one(_ints(arrays, "steps"), "steps"), _one(_ints(arrays, "seed"), "seed")
    sampler = parameters(body, "request").get("sampler")
    if sampler is not None and sampler not in SAMPLERS:
        raise InvalidInput(
            f"parameter 'sampler' must be one of {', '.join(SAMPLERS)}, got {_show(sampler)}", "sampler"
        )
    if parameters(body, "request").get("stream") not in (None, False):  # never a silent non-streamed answer
        msg = "parameter 'stream': v2 does not stream; use /v1/generate or /v1/images/generations"
        raise InvalidInput(msg, "stream")
    w = _float(arrays, "guidance_scale")
    steer = _steer(parameters(body, "request").get("steer"))
    return GenParams(
        model=model,
        steps=steps,
        num_samples=1 if n is None else n,
        seed=seed,
        class_label=label,
        guidance_scale=w,
        output="tensor",
        sampler=sampler,
        steer=steer,
    )


def _steer(value) -> SteerParams | None:
    """Request parameter "steer": the v1 option's object ({reward, scale, particles, method})."""
    if value is None:
        return None
    try:
        return steering.from_wire(value)
    except (steering.SteerError, TypeError):
        msg = "parameter 'steer' must be an object with reward and optional scale, particles, method"
        raise InvalidInput(msg, "steer") from None


def requested_outputs(e: ModelEntry, body: dict) -> list[tuple[str, bool]]:
    """[(name, binary)]: what the client asked for, default all outputs as JSON (or binary if asked);
    each output at most once (a list of 1000 'samples' would multiply the response)."""
    avail = outputs_of(e)
    default_bin = _flag(parameters(body, "request"), "binary_data_output", False, "request")
    asked = body.get("outputs")
    if asked is not None and not isinstance(asked, list):
        raise InvalidInput(
            f"'outputs' must be a list of {{\"name\": ...}} objects, got {_show(asked)}", "outputs"
        )
    out: dict[str, bool] = {}
    for o in asked or [{"name": k} for k in avail]:
        name = o.get("name") if isinstance(o, dict) else None
        if not isinstance(name, str) or name not in avail:
            shown = _show(name if isinstance(o, dict) else o)
            raise InvalidInput(f"unknown output {shown}; available: {', '.join(avail)}", "outputs")
        if name in out:
            raise InvalidInput(f"output {name!r} asked twice", "outputs")
        out[name] = _flag(parameters(o, f"output {name!r}"), "binary_data", default_bin, f"output {name!r}")
    return list(out.items())


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
        return {"name": "flowmap", "version": VERSION, "extensions": ["binary_tensor_data"]}

    @r.get("/health/live")
    async def live():
        return {"live": True}

    @r.get("/health/ready")
    async def ready():
        return JSONResponse({"ready": service.ready}, 200 if service.ready else 503)

    # {name} is read from the path, not declared as an argument: FastAPI would document a 422 for it, and
    # v2 never sends one (invalid input is a 400)
    named = {"parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]}

    @r.get("/models/{name}", dependencies=auth, responses=_errors(401, 404), openapi_extra=named)
    async def model_metadata(request: Request):
        return metadata(_entry(service, request.path_params["name"]))

    @r.get("/models/{name}/ready", responses=_errors(404, 503), openapi_extra=named)
    async def model_ready(request: Request):
        name = request.path_params["name"]
        _entry(service, name)
        return JSONResponse({"name": name, "ready": service.ready}, 200 if service.ready else 503)

    @r.post(
        "/models/{name}/infer",
        dependencies=auth,
        responses={
            200: {
                "description": "outputs as JSON; with binary outputs the JSON header "
                "(Inference-Header-Content-Length bytes), then the raw tensors",
                "content": {
                    "application/json": {"schema": INFER_RESPONSE},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            **_errors(*STATUSES),
        },
        openapi_extra={
            **named,
            "requestBody": {"required": True, "content": {"application/json": {"schema": INFER_SCHEMA}}},
        },
    )
    async def infer(request: Request):
        return await _infer(service, request.path_params["name"], request)

    return r


def _entry(service: Service, name: str) -> ModelEntry:
    return service.entry(name or "")


async def _infer(service: Service, name: str, request: Request) -> Response:
    e = _entry(service, name)
    body, binary = split_body(await request.body(), request.headers.get(HEADER))
    p = to_params(name, body, binary)
    wanted = requested_outputs(e, body)
    p.steps = steps_for(p.steps, service.settings.default_steps)
    return await http.generate(service, p, request, lambda r: infer_response(e, body, r, wanted))


def infer_response(e: ModelEntry, body: dict, result: GenResult, wanted: list[tuple[str, bool]]) -> Response:
    specs, blob = encode_outputs(e, result.x, wanted)
    head = {
        "model_name": e.spec.name,
        "model_version": "1",
        "outputs": specs,
        "parameters": {"steps": result.steps, "seed": result.seed},
    }
    if result.steered:  # the cost of a steered request: network rows per returned sample
        head["parameters"]["network_calls_per_sample"] = result.calls_per_sample
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
