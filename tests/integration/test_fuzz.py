"""Property-based fuzz of both protocols against a real server: no input may produce a 5xx.

1. A bounded schemathesis run over /openapi.json (positive and negative cases of every operation); each
   status, content type and body as /openapi.json declares it.
2. Hostile JSON and framing from hypothesis that no schema-driven tool sends: bare NaN/Infinity tokens,
   5000-digit numbers, deep nesting, lone surrogates, wrong JSON types in every field, binary garbage,
   and binary-extension lengths that lie (binary_data_size, Inference-Header-Content-Length, extra
   bytes), on /v1/generate, /v2/models/*/infer and /v1/images/generations (whose every error has
   OpenAI's shape, and whose streams are OpenAI's image events, partial_images in range or not).
   Besides no 5xx: each error body is strict JSON, the server stays live and ready, /metrics labels
   take only server-known values and its size stays within a small factor, and the API processes' RSS
   stays bounded.

The one 5xx a well-formed request can earn is the documented 504 for a deadline_ms too short to meet
(e.g. 1 ms for 31 samples); that is the contract, not a server error, and is accepted below.

Driven through schemathesis' Python API with hypothesis (its pytest plugin does not load under pytest 9);
bounded example counts and derandomized, so the file runs in well under a minute on 2 vCPUs.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections import Counter

import httpx
import numpy as np
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from server.common.metrics import REASONS, STATUSES  # noqa: E402
from tests.integration.conftest import AUTH  # noqa: E402

EXAMPLES = 30  # per operation; the whole run stays well under a minute


def deadline_passed(status: int, body: dict) -> bool:
    """The documented 504 for a deadline the request set, passed or too short for even one step on an idle
    core (v1's and the OpenAI images route's body)."""
    error, detail = body.get("error"), str(body.get("detail"))
    return status == 504 and (
        detail == "deadline passed"
        or detail.startswith("deadline_ms too short")
        or isinstance(error, dict)
        and error.get("code") == "deadline"
    )


def no_server_error(ctx, response, case):
    """schemathesis' not_a_server_error, except the documented 504 for a deadline the request set."""
    if response.status_code == 504 and deadline_passed(504, response.json()):
        return True
    return not_a_server_error(ctx, response, case)


def documented(ctx, response, case):
    """schemathesis' status_code_conformance: every status sent is declared in /openapi.json (with the
    checks below, in the declared content type and schema: the v2 400/404 {"error"} bodies included).
    /v1/models does not declare its 401 yet."""
    if case.operation.path == "/v1/models" and response.status_code == 401:
        return True
    return status_code_conformance(ctx, response, case)


CHECKS = [no_server_error, documented, content_type_conformance, response_schema_conformance]


def operations(url: str):
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def strategies(ops):
    """Positive and negative cases for each operation with inputs; {name} pinned to a served model."""
    for op in ops:
        pinned = {"name": "digits"} if "{name}" in op.path else None
        modes = [GenerationMode.POSITIVE]
        if op.method == "post":
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            yield op.as_strategy(mode, path_parameters=pinned)


def test_no_server_errors(server):
    ops = operations(server.url)
    assert {op.path for op in ops} >= {"/v1/generate", "/v2/models/{name}/infer", "/v1/images/generations"}
    statuses = []
    for strategy in strategies(ops):

        @given(case=strategy)
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case):
            r = case.call_and_validate(base_url=server.url, headers=AUTH, checks=CHECKS)
            statuses.append(r.status_code)

        run()
    assert 200 in statuses and 422 in statuses and 400 in statuses  # it reached the models and the checks
    # streams, whatever the draws reached: every event against the schema /openapi.json declares for one
    by_path = {op.path: op for op in ops}
    for path, body in (
        ("/v1/generate", {"stream": True, "steps": 2}),
        (IMAGES, {"prompt": "3", "stream": True, "n": 2}),
    ):
        case = by_path[path].Case(body=body, media_type="application/json")
        r = case.call_and_validate(base_url=server.url, headers=AUTH, checks=CHECKS)
        assert r.status_code == 200 and "text/event-stream" in str(r.headers["content-type"]), r.text


# ------------------------------------------------------------------------------------------------ hostile
HOSTILE_EXAMPLES = 400  # per protocol and framing (about 10 s on 2 vCPUs)
FUZZ = settings(
    max_examples=HOSTILE_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


class Token(str):
    """JSON text written as is: what json.dumps will not produce."""


TOKENS = [
    "NaN",
    "-NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "-1e999",
    "-0",
    "1E-400",
    "9" * 5000,  # over Python's 4300-digit int limit
    "1" + "0" * 400,
    "[" * 3000 + "]" * 3000,  # past the recursion limit
    '{"a":' * 1500 + "1" + "}" * 1500,
    '"\\ud800"',  # a lone surrogate
    '"\\u0000"',
    '"\\udfff\\ud800"',
]


def dump(v) -> str:
    """JSON text of v, with Token kept verbatim and NaN/Infinity as bare tokens."""
    if isinstance(v, Token):
        return str(v)
    if isinstance(v, dict):
        return "{" + ",".join(json.dumps(k) + ":" + dump(x) for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ",".join(dump(x) for x in v) + "]"
    return json.dumps(v)


def encode(v) -> bytes:
    return dump(v).encode("utf-8", "surrogatepass")  # a dict key may hold a lone surrogate


text = st.text(st.characters(), max_size=12)  # any code point, lone surrogates included
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, 4, 5, -1, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    text,
    st.sampled_from(TOKENS).map(Token),
)
hostile = st.recursive(
    scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(text, c, max_size=4), max_leaves=10
)


def broken(draw, obj: dict, choices: dict, most: int = 2) -> dict:
    """obj with up to `most` of its fields (or new ones) replaced by what `choices` draws (none, often)."""
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2][: most + 3]))):
        key = draw(st.sampled_from(list(choices)))
        obj[key] = draw(choices[key])
    return obj


def whole_body(draw, well_formed) -> bytes:
    """Mostly a well-formed request with a few fields broken; sometimes anything JSON, or no JSON at all."""
    kind = draw(st.sampled_from(["request"] * 8 + ["json", "binary"]))
    if kind == "binary":
        return draw(st.binary(max_size=300))
    return encode(draw(hostile) if kind == "json" else well_formed)


# v1 ----------------------------------------------------------------------------------------------
V1_GOOD = {
    "model": st.sampled_from(["digits", "digits", "gmm8", "cats"]),
    "steps": st.sampled_from([1, 2, 4, "auto"]),
    "num_samples": st.integers(1, 8),
    "seed": st.integers(0, 2**63 - 1),
    "class_label": st.integers(0, 9) | st.lists(st.integers(0, 9), min_size=1, max_size=3),
    "guidance_scale": st.floats(-3, 3) | st.integers(-3, 3),
    "output": st.sampled_from(["png", "npy", "webp", "jpeg"]),
    "quality": st.integers(0, 101),
    "deadline_ms": st.floats(1, 30_000) | st.integers(1, 30_000),
    "stream": st.booleans(),
}
V1_BREAK = {**dict.fromkeys(V1_GOOD, hostile), "colour": hostile}
CONTENT_TYPES = ["application/json"] * 6 + ["application/json; charset=utf-16", "text/plain", ""]


@st.composite
def v1_requests(draw):
    fields = draw(st.lists(st.sampled_from(list(V1_GOOD)), max_size=5, unique=True))
    body = broken(draw, {k: draw(V1_GOOD[k]) for k in fields}, V1_BREAK)
    ctype = draw(st.sampled_from(CONTENT_TYPES))
    return "/v1/generate", whole_body(draw, body)[:8000], {"content-type": ctype} if ctype else {}


# OpenAI images ---------------------------------------------------------------------------------
IMAGES = "/v1/images/generations"
IMAGES_GOOD = {
    "model": st.sampled_from(["digits", "digits", "gmm8", "dall-e-3"]),
    "prompt": st.sampled_from(["7", "seven", " Nine ", "a cat", "\u0667", "07", "10"]) | text,
    "n": st.integers(1, 8),
    "size": st.sampled_from(["8x8", "auto", "1024x1024", "8X8"]),
    "response_format": st.sampled_from(["b64_json", "url"]),
    "output_format": st.sampled_from(["png", "webp", "jpeg", "gif"]),
    "quality": st.sampled_from(["standard", "hd", "auto"]),
    "steps": st.sampled_from([1, 2, 4, "auto"]),
    "seed": st.integers(0, 2**63 - 1),
    "guidance_scale": st.floats(-3, 3) | st.integers(-3, 3),
    "sampler": st.sampled_from(["flowmap", "consistency", "ddim"]),
    "output_compression": st.integers(0, 101),
    "deadline_ms": st.floats(1, 30_000) | st.integers(1, 30_000),
    "stream": st.booleans(),
    "partial_images": st.integers(-1, 4) | st.none(),
}
IMAGES_BREAK = dict.fromkeys(IMAGES_GOOD, hostile)


@st.composite
def images_requests(draw):
    fields = draw(st.lists(st.sampled_from(list(IMAGES_GOOD)), max_size=6, unique=True))
    clean = {"prompt": "1"} | {k: draw(IMAGES_GOOD[k]) for k in fields}
    if "partial_images" in clean and draw(st.booleans()):  # often as meant: streamed, over a few steps
        clean |= {"stream": True, "steps": clean.get("steps", 4)}
    body = broken(draw, clean, IMAGES_BREAK)
    ctype = draw(st.sampled_from(CONTENT_TYPES))
    return IMAGES, whole_body(draw, body)[:8000], {"content-type": ctype} if ctype else {}


# v2 JSON -----------------------------------------------------------------------------------------
INPUT_TYPES = {"seed": "INT64", "steps": "INT32", "num_samples": "INT32", "class_label": "INT32"}
INPUT_TYPES["guidance_scale"] = "FP32"
V2_GOOD = {
    "seed": st.integers(0, 2**63 - 1),
    "steps": st.integers(1, 4),
    "num_samples": st.integers(1, 4),
    "class_label": st.integers(0, 9),
    "guidance_scale": st.floats(-3, 3),
}
DTYPES = ["BOOL", "UINT8", "INT32", "INT64", "UINT64", "FP16", "FP32", "FP64", "BYTES"]
NUMPY = {"BOOL": np.bool_, "UINT8": np.uint8, "INT32": np.int32, "INT64": np.int64, "UINT64": np.uint64}
NUMPY |= {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
PARAMETERS = st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-8, 64) | hostile})
TENSOR_BREAK = {
    "name": hostile,
    "datatype": st.sampled_from(DTYPES) | hostile,
    "shape": st.lists(st.integers(-1, 4), max_size=3) | hostile,
    "data": st.lists(scalars, max_size=3) | hostile,
    "parameters": PARAMETERS | hostile,
}
OUTPUT_BREAK = {
    "name": hostile,
    "parameters": st.fixed_dictionaries({}, optional={"binary_data": hostile}) | hostile,
}
REQUEST_BREAK = {
    "inputs": hostile,
    "outputs": st.lists(hostile, max_size=3) | hostile,
    "parameters": st.fixed_dictionaries({}, optional={"binary_data_output": hostile}) | hostile,
    "id": hostile,
}
MODEL_NAMES = st.sampled_from(["digits"] * 6 + ["gmm8", "cats", "?"])


@st.composite
def v2_requests(draw):
    name = draw(MODEL_NAMES)
    name = dump(draw(hostile)) if name == "?" else name
    path = f"/v2/models/{urllib.parse.quote(name.encode('utf-8', 'surrogatepass')[:200], safe='')}/infer"
    inputs = []
    for n in draw(st.lists(st.sampled_from(list(INPUT_TYPES)), max_size=4, unique=True)):
        clean = {"name": n, "datatype": INPUT_TYPES[n], "shape": [1], "data": [draw(V2_GOOD[n])]}
        inputs.append(broken(draw, clean, TENSOR_BREAK, most=1))
    body = {"inputs": inputs}
    if draw(st.booleans()):
        outs = draw(st.lists(st.sampled_from(["samples", "images"]), max_size=2, unique=True))
        body["outputs"] = [broken(draw, {"name": o}, OUTPUT_BREAK, most=1) for o in outs]
    return path, whole_body(draw, broken(draw, body, REQUEST_BREAK, most=1))[:8000], {}


# v2 binary extension -----------------------------------------------------------------------------
LIES = ["none"] * 3 + ["size", "bytes", "datatype", "shape", "header", "tail"]


@st.composite
def v2_binary_requests(draw):
    """Binary-extension requests, well-formed or with one lie: an input's binary_data_size, datatype,
    shape or bytes, the Inference-Header-Content-Length header, or bytes after the last tensor."""
    names = draw(st.lists(st.sampled_from(list(INPUT_TYPES)), min_size=1, max_size=4, unique=True))
    lie, liar = draw(st.sampled_from(LIES)), draw(st.sampled_from(names))
    inputs, blobs = [], []
    for name in names:
        datatype, n, lying = INPUT_TYPES[name], 1, name == liar
        if lying and lie == "datatype":
            datatype = draw(st.sampled_from(DTYPES[:-1]))
        if lying and lie == "shape":
            n = draw(st.sampled_from([0, 2, 3]))
        blob = np.asarray([draw(V2_GOOD[name]) for _ in range(n)], NUMPY[INPUT_TYPES[name]]).tobytes()
        if lying and lie in ("bytes", "datatype"):  # any bit pattern: NaN, inf, 1.7, huge, negative
            nbytes = n * np.dtype(NUMPY[datatype]).itemsize
            blob = draw(st.binary(min_size=nbytes, max_size=nbytes))
        size = len(blob)
        if lying and lie == "size":
            size += draw(st.sampled_from([-1, 1, -8, 8, -len(blob) - 1, 2**40]))
        inputs.append(
            {"name": name, "datatype": datatype, "shape": [n], "parameters": {"binary_data_size": size}}
        )
        blobs.append(blob)
    head = json.dumps(
        {"inputs": inputs, "outputs": [{"name": "samples", "parameters": {"binary_data": True}}]}
    )
    tail = b"".join(blobs) + (draw(st.binary(min_size=1, max_size=16)) if lie == "tail" else b"")
    length = str(len(head))
    if lie == "header":
        wrong = st.integers(-3, len(head) + len(tail) + 3).filter(lambda v: v != len(head)).map(str)
        length = draw(wrong | st.text(st.characters(codec="ascii", categories=["N", "P", "L"]), max_size=6))
    headers = {"Inference-Header-Content-Length": length} if length else {}
    return "/v2/models/digits/infer", head.encode() + tail, headers


# checks ------------------------------------------------------------------------------------------
def strict_json(raw: bytes):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token} in a response")

    return json.loads(raw, parse_constant=refuse)


KNOWN_LABELS = {
    "model": {"digits", "gmm8", ""},
    "status": {str(s) for s in STATUSES} | {"other"},
    "steps": {"", "1", "2", "3", "4"},
    "reason": REASONS | {"other"},
}


def unknown_labels(metrics: str) -> set[str]:
    """flowmap_ label values a client could have chosen (model, status, steps, reason)."""
    found = set()
    for line in metrics.splitlines():
        if line.startswith("flowmap_"):
            for key, value in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line):
                if key in KNOWN_LABELS and value not in KNOWN_LABELS[key]:
                    found.add(f"{key}={value}")
    return found


def api_rss_mb(server) -> float:
    """Resident memory of the server's API processes together."""
    pid, total = server.proc.pid, 0.0
    for kid in open(f"/proc/{pid}/task/{pid}/children").read().split():
        if b"server.api_process" in open(f"/proc/{kid}/cmdline", "rb").read():
            status = open(f"/proc/{kid}/status").read()
            total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
    return total


def parse_events(text: str) -> tuple[list[str], list]:
    """(names, strict-JSON datas) of a streamed answer."""
    events = [block.split("\n", 1) for block in text.strip().split("\n\n")]
    names = [head.removeprefix("event: ") for head, _ in events]
    return names, [strict_json(data.removeprefix("data: ")) for _, data in events]


def assert_events(text: str) -> None:
    """v1's stream: previews numbered 1..K, then one result or error event."""
    names, datas = parse_events(text)
    k = len(names) - 1
    assert names == ["preview"] * k + [names[-1]] and names[-1] in ("result", "error"), names
    assert [d["step"] for d in datas[:k]] == list(range(1, k + 1)), text[:300]
    if names[-1] == "result":
        assert k == datas[-1]["steps"], text[:300]


OPENAI_EVENTS: Counter = Counter()  # the images route's streamed events, over the run


def assert_openai_events(text: str) -> None:
    """The images route's stream: partial images (their index rising 0.., at most 3), then one completed
    event per image (the same steps), or an error; each data's type its event's name."""
    names, datas = parse_events(text)
    OPENAI_EVENTS.update(names)
    partial = [d for d in datas if d.get("type") == "image_generation.partial_image"]
    done = [d for d in datas if d.get("type") == "image_generation.completed"]
    assert [d.get("type") for d in datas] == names, text[:300]
    assert names[: len(partial)] == ["image_generation.partial_image"] * len(partial), names
    assert len({d["partial_image_index"] for d in partial}) <= 3 and all(
        d["step"] < d["steps"] for d in partial
    )
    if names[-1] == "error":
        assert len(partial) + 1 == len(names) and "message" in datas[-1]["error"], text[:300]
        return
    assert done and len(partial) + len(done) == len(names), names
    assert [d["index"] for d in done] == list(range(len(done))) and len({d["steps"] for d in done}) == 1


def fuzz(server, requests, seen: list[int]) -> None:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as c:

        @given(req=requests)
        @FUZZ
        def run(req):
            path, body, headers = req
            r = c.post(path, content=body, headers=headers)  # a dropped connection fails here
            documented_504 = (
                r.status_code == 504
                and path in ("/v1/generate", IMAGES)
                and deadline_passed(r.status_code, r.json())
            )
            assert r.status_code < 500 or documented_504, (path, body[:300], headers, r.status_code, r.text)
            if r.status_code != 200:
                assert isinstance(strict_json(r.content), dict), r.text
            elif r.headers["content-type"].startswith("text/event-stream"):
                (assert_openai_events if path == IMAGES else assert_events)(r.text)
            if path == IMAGES and r.status_code != 200:  # OpenAI's error shape, whatever went wrong
                assert set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text
            seen.append(r.status_code)

        run()


def warm(server) -> None:
    """Ordinary traffic first, so the baseline holds the series any busy server has (each model, step count
    and common status): growth past it would be series a client minted."""
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as c:
        for model in ("digits", "gmm8"):
            for steps in (1, 2, 3, 4, "auto", 99):
                c.post("/v1/generate", json={"model": model, "steps": steps, "output": "npy"})
                v2_steps = {
                    "name": "steps",
                    "datatype": "INT32",
                    "shape": [1],
                    "data": [9 if steps == 99 else 1],
                }
                c.post(f"/v2/models/{model}/infer", json={"inputs": [v2_steps]})
            c.post("/v1/generate", json={"model": model, "class_label": 99, "output": "npy"})
        c.post("/v1/generate", json={"model": "cats"})
        c.post("/v2/models/cats/infer", json={"inputs": []})


def test_hostile_json_and_framing(server):
    warm(server)
    metrics0, rss0 = httpx.get(server.url + "/metrics").text, api_rss_mb(server)
    seen: dict[str, list[int]] = {"v1": [], "v2": [], "v2 binary": [], "images": []}
    kinds = (v1_requests(), v2_requests(), v2_binary_requests(), images_requests())
    for kind, requests in zip(seen, kinds, strict=True):
        fuzz(server, requests, seen[kind])
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert httpx.get(server.url + "/readyz").status_code == 200
    metrics1, rss1 = httpx.get(server.url + "/metrics").text, api_rss_mb(server)
    assert not unknown_labels(metrics1), sorted(unknown_labels(metrics1))[:20]
    assert len(metrics1) < 2 * len(metrics0), (len(metrics0), len(metrics1))
    assert rss1 < rss0 + 64, (rss0, rss1)
    # it reached the models and the checks of each protocol
    counts = {kind: sorted(Counter(statuses).items()) for kind, statuses in seen.items()}
    assert {200, 422} <= set(seen["v1"]) and {200, 400, 404} <= set(seen["v2"]), counts
    assert {200, 400} <= set(seen["v2 binary"]), counts
    assert {200, 400, 404} <= set(seen["images"]), counts
    # the draws reach a partial image only now and then (stream, partial_images >= 1, steps >= 2, nothing
    # broken): one well-formed stream makes sure both event kinds went through the same checks
    body = {"prompt": "1", "stream": True, "partial_images": 2, "steps": 4}
    r = httpx.post(server.url + IMAGES, json=body, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    assert_openai_events(r.text)
    assert {"image_generation.partial_image", "image_generation.completed"} <= set(OPENAI_EVENTS)
    print(
        counts,
        dict(OPENAI_EVENTS),
        f"/metrics {len(metrics0)} -> {len(metrics1)} bytes, API RSS {rss0:.0f} -> {rss1:.0f} MB",
    )
