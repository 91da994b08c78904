"""Hostile input against real servers: payloads no client of this repo sends (bare NaN/Infinity tokens,
deep nesting, wrong JSON types, broken binary-extension framing, half-sent requests, too many
connections, endless headers, client-chosen model names). Never a 5xx, never a silent coercion, never a
client-minted metrics series; errors name the field (v1: 422 loc, v2: 400 {"error"})."""

from __future__ import annotations

import json
import re
import select
import socket
import time
import uuid

import httpx
import numpy as np
import pytest

from tests.integration.conftest import AUTH, ServerProcess

HEADER_TIMEOUT, BODY_TIMEOUT, MAX_CONNECTIONS = 1.0, 1.0, 8


@pytest.fixture(scope="module")
def bare(checkpoints):
    """No API key, one API process (so the connection cap is the server's), tight connection limits."""
    s = ServerProcess(
        [
            *("--model", str(checkpoints["digits"]), "--model", str(checkpoints["gmm8"])),
            *("--engine", "eager", "--max-steps", "4", "--max-body-bytes", "8192", "--api-workers", "1"),
            *("--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT)),
            *("--max-connections", str(MAX_CONNECTIONS)),
        ]
    ).wait_ready()
    yield s
    assert s.stop() == 0


def strict_json(raw: bytes):
    """json.loads that refuses NaN/Infinity: what a strict client (JavaScript, Go) can parse."""

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(raw, parse_constant=refuse)


class Raw:
    """One keep-alive connection speaking raw HTTP/1.1, for what HTTP clients refuse to send."""

    def __init__(self, url: str, timeout: float = 10.0):
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None):
        head = f"{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n"
        head += "Content-Type: application/json\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.send(head.encode() + b"\r\n" + body)
        return self.response()

    def response(self) -> tuple[int, dict, bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
        n = int(headers.get("content-length", 0))
        while len(self.buf) < n:
            self._more()
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buf += chunk

    def closed_within(self, seconds: float) -> float | None:
        """Seconds until the server closes (EOF or reset), reading and dropping what it sends; None if not."""
        t0 = time.monotonic()
        self.sock.settimeout(0.05)
        while time.monotonic() - t0 < seconds:
            try:
                if not self.sock.recv(65536):
                    return time.monotonic() - t0
            except TimeoutError:
                continue
            except OSError:
                return time.monotonic() - t0
        return None


def api_pids(server: ServerProcess) -> list[int]:
    pid = server.proc.pid
    kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
    return [int(k) for k in kids if b"server.api_process" in open(f"/proc/{k}/cmdline", "rb").read()]


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def series(text: str) -> set[str]:
    """The metric series of a /metrics text (names with labels, no values)."""
    return {ln.rsplit(" ", 1)[0] for ln in text.splitlines() if ln and not ln.startswith("#")}


def request_counts(text: str, status: int) -> float:
    pattern = rf'^flowmap_request_duration_seconds_count\{{[^}}]*status="{status}"[^}}]*\}} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.M))


# ------------------------------------------------------------------------------------------------ v1
NAN_TOKENS = [
    (b'{"guidance_scale": NaN}', "guidance_scale"),
    (b'{"guidance_scale": -Infinity}', "guidance_scale"),
    (b'{"deadline_ms": Infinity}', "deadline_ms"),
    (b'{"seed": NaN}', "seed"),
    (b'{"steps": Infinity}', "steps"),
    (b'{"num_samples": NaN}', "num_samples"),
    (b'{"class_label": [1, NaN]}', "class_label"),
    (b'{"model": NaN}', "model"),
    (b'{"colour": NaN}', "colour"),
    (b'{"stream": NaN}', "stream"),
]


def test_v1_nan_and_infinity_tokens_are_422_and_the_connection_lives(server):
    conn = Raw(server.url)
    try:
        for body, field in NAN_TOKENS:
            status, headers, raw = conn.request("POST", "/v1/generate", body, AUTH)
            assert status == 422, (body, raw)
            detail = strict_json(raw)["detail"]
            assert any(field in map(str, d["loc"]) for d in detail), (body, raw)
            assert headers.get("connection") != "close"
        status, _, raw = conn.request("POST", "/v1/generate", b'{"steps": 1, "output": "npy"}', AUTH)
        assert status == 200, raw  # the same keep-alive connection still serves
    finally:
        conn.close()


STRICT = [
    ({"steps": "2"}, "steps"),
    ({"steps": True}, "steps"),
    ({"steps": 2.0}, "steps"),
    ({"steps": [2]}, "steps"),
    ({"num_samples": "2"}, "num_samples"),
    ({"num_samples": True}, "num_samples"),
    ({"num_samples": 1.0}, "num_samples"),
    ({"seed": "5"}, "seed"),
    ({"seed": True}, "seed"),
    ({"seed": 5.0}, "seed"),
    ({"class_label": "3"}, "class_label"),
    ({"class_label": True}, "class_label"),
    ({"class_label": 1.7}, "class_label"),
    ({"class_label": [1, True]}, "class_label"),
    ({"guidance_scale": "2"}, "guidance_scale"),
    ({"guidance_scale": True}, "guidance_scale"),
    ({"deadline_ms": "100"}, "deadline_ms"),
    ({"deadline_ms": False}, "deadline_ms"),
    ({"model": 5}, "model"),
    ({"model": ["digits"]}, "model"),
    ({"output": 1}, "output"),
    ({"stream": "true"}, "stream"),
    ({"stream": 1}, "stream"),
    ({"stream": 0}, "stream"),
    ({"stream": None}, "stream"),
    ({"stream": [True]}, "stream"),
    ({"stream": {"on": True}}, "stream"),
]


@pytest.mark.parametrize("body,field", STRICT)
def test_v1_strict_types_no_coercion(client, body, field):
    r = client.post("/v1/generate", json={"output": "npy", **body})
    assert r.status_code == 422, r.text
    assert any(field in map(str, d["loc"]) for d in r.json()["detail"]), r.text


def test_v1_floats_take_json_integers(client):
    r = client.post(
        "/v1/generate", json={"guidance_scale": 2, "deadline_ms": 5000, "seed": 1, "output": "npy"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["guidance_scale"] == 2.0


@pytest.mark.parametrize(
    "raw",
    [
        b'{"steps": ' + b"[" * 3000 + b"]" * 3000 + b"}",  # RecursionError in json.loads
        b'{"seed": ' + b"9" * 5000 + b"}",  # over Python's 4300-digit int limit
        b"\xff\xfe\x00\x00",  # not UTF-8
        b'{"\\ud800": 1}',  # a lone surrogate as a key
        b'{"model": "\\udfff"}',
        b"NaN",
        b"[]",
        b"",
    ],
)
def test_v1_unparsable_bodies_are_422(client, raw):
    r = client.post("/v1/generate", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert strict_json(r.content)["detail"][0]["loc"][0] == "body"


# ------------------------------------------------------------------------------------------------ v2
def tensor(name="seed", datatype="INT64", shape=(1,), data=(3,), **extra) -> dict:
    t = {"name": name, "datatype": datatype, "shape": list(shape), **extra}
    if data is not None:
        t["data"] = list(data)
    return t


def infer(*inputs, **extra) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def binary(inputs: list[tuple[dict, bytes]], tail: bytes = b"", **extra) -> tuple[bytes, dict]:
    """A binary-extension body: JSON header, then each input's bytes; with the header-length header."""
    head = json.dumps({"inputs": [t for t, _ in inputs], **extra}).encode()
    blob = b"".join(b for _, b in inputs) + tail
    return head + blob, {"Inference-Header-Content-Length": str(len(head))}


def bin_input(name, datatype, values, dtype, size=None) -> tuple[dict, bytes]:
    b = np.asarray(values, dtype).tobytes()
    t = tensor(
        name,
        datatype,
        (len(values),),
        None,
        parameters={"binary_data_size": len(b) if size is None else size},
    )
    return t, b


DEEP = b'{"inputs": [{"name": "seed", "shape": [1], "datatype": "INT64", "data": '
V2_BAD = {
    # malformed JSON, deep nesting
    "deep data": (DEEP + b"[" * 3000 + b"]" * 3000 + b"}]}", {}, "JSON"),
    "deep top": (b"[" * 3000 + b"]" * 3000, {}, "JSON"),
    "not utf-8": (b"\xff\xfe\x00{", {}, "JSON"),
    "a list": (b"[1, 2]", {}, "inputs"),
    "null": (b"null", {}, "inputs"),
    "inputs not a list": (b'{"inputs": {"name": "seed"}}', {}, "inputs"),
    # NaN / Infinity / fractions where a whole number goes: never a silent class 1 or a default
    "FP32 NaN class": (infer(tensor("class_label", "FP32", data=[float("nan")])), {}, "class_label"),
    "FP32 inf class": (infer(tensor("class_label", "FP32", data=[float("inf")])), {}, "class_label"),
    "FP32 -inf class": (infer(tensor("class_label", "FP32", data=[float("-inf")])), {}, "class_label"),
    "FP32 1.7 class": (infer(tensor("class_label", "FP32", data=[1.7])), {}, "class_label"),
    "FP32 huge class": (infer(tensor("class_label", "FP64", data=[-1e30])), {}, "class_label"),
    "INT32 1.7 class": (infer(tensor("class_label", "INT32", data=[1.7])), {}, "class_label"),
    "INT32 '3' class": (infer(tensor("class_label", "INT32", data=["3"])), {}, "class_label"),
    "INT32 true class": (infer(tensor("class_label", "INT32", data=[True])), {}, "class_label"),
    "NaN guidance": (infer(tensor("guidance_scale", "FP32", data=[float("nan")])), {}, "guidance_scale"),
    "inf guidance": (infer(tensor("guidance_scale", "FP64", data=[float("inf")])), {}, "guidance_scale"),
    "'2' guidance": (infer(tensor("guidance_scale", "FP32", data=["2"])), {}, "guidance_scale"),
    "BOOL guidance": (infer(tensor("guidance_scale", "BOOL", data=[True])), {}, "guidance_scale"),
    "huge guidance": (infer(tensor("guidance_scale", "FP32", data=[10**400])), {}, "guidance_scale"),
    "2.5 steps": (infer(tensor("steps", "FP32", data=[2.5])), {}, "steps"),
    "BOOL steps": (infer(tensor("steps", "BOOL", data=[True])), {}, "steps"),
    "INT32 overflow": (infer(tensor("num_samples", "INT32", data=[2**40])), {}, "num_samples"),
    "INT64 overflow": (infer(tensor("seed", "INT64", data=[2**64])), {}, "seed"),
    "UINT8 negative": (infer(tensor("seed", "UINT8", data=[-1])), {}, "seed"),
    "UINT64 over seed": (infer(tensor("seed", "UINT64", data=[2**64 - 1])), {}, "seed"),
    "object in data": (infer(tensor("seed", data=[{"a": 1}])), {}, "seed"),
    "data a string": (infer({**tensor("seed"), "data": "3"}), {}, "seed"),
    "two values": (infer(tensor("seed", shape=[2], data=[1, 2])), {}, "seed"),
    # wrong JSON types in the tensor spec
    "name a list": (infer(tensor(["seed"])), {}, "unknown input"),
    "name an object": (infer(tensor({"a": 1})), {}, "unknown input"),
    "name null": (infer(tensor(None)), {}, "unknown input"),
    "input a string": (infer("seed"), {}, "unknown input"),
    "datatype a list": (infer(tensor("seed", ["INT64"])), {}, "seed"),
    "datatype unknown": (infer(tensor("seed", "INT128")), {}, "seed"),
    "shape [true]": (infer(tensor("seed", shape=[True])), {}, "seed"),
    "shape [-1]": (infer(tensor("seed", shape=[-1])), {}, "seed"),
    "shape a string": (infer({**tensor("seed"), "shape": "1"}), {}, "seed"),
    "same input twice": (infer(tensor("seed"), tensor("seed")), {}, "seed"),
    # non-object parameters, outputs that are not objects, duplicate outputs
    "parameters a list": (infer(tensor(), parameters=[1]), {}, "parameters"),
    "parameters a string": (infer(tensor(), parameters="binary"), {}, "parameters"),
    "parameters a number": (infer(tensor(), parameters=3), {}, "parameters"),
    "input parameters a list": (infer(tensor(parameters=[1])), {}, "'seed'"),
    "output parameters a string": (
        infer(tensor(), outputs=[{"name": "samples", "parameters": "x"}]),
        {},
        "'samples'",
    ),
    "output a string": (infer(tensor(), outputs=["samples"]), {}, "unknown output"),
    "output a number": (infer(tensor(), outputs=[5]), {}, "unknown output"),
    "output name a list": (infer(tensor(), outputs=[{"name": ["samples"]}]), {}, "unknown output"),
    "outputs an object": (infer(tensor(), outputs={"name": "samples"}), {}, "outputs"),
    "output twice": (infer(tensor(), outputs=[{"name": "samples"}, {"name": "samples"}]), {}, "samples"),
    "binary_data a string": (
        infer(tensor(), outputs=[{"name": "samples", "parameters": {"binary_data": "yes"}}]),
        {},
        "binary_data",
    ),
    "binary_data_output 1": (infer(tensor(), parameters={"binary_data_output": 1}), {}, "binary_data_output"),
    "id a number": (infer(tensor(), id=5), {}, "id"),
    "id a lone surrogate": (infer(tensor(), id="\ud800"), {}, "id"),  # echoed: UTF-8 cannot encode it
    # the binary tensor extension with wrong lengths
    "size a string": binary([(tensor(data=None, parameters={"binary_data_size": "8"}), b"\0" * 8)])
    + ("seed",),
    "size negative": binary([(tensor(data=None, parameters={"binary_data_size": -8}), b"\0" * 8)])
    + ("seed",),
    "size a float": binary([(tensor(data=None, parameters={"binary_data_size": 8.0}), b"\0" * 8)])
    + ("seed",),
    "size short": binary([bin_input("seed", "INT64", [3], np.int64, size=4)]) + ("seed",),
    "size past the end": binary([bin_input("seed", "INT64", [3], np.int64, size=16)]) + ("seed",),
    "size huge": binary([bin_input("seed", "INT64", [3], np.int64, size=2**70)]) + ("seed",),
    "bytes left over": binary([bin_input("seed", "INT64", [3], np.int64)], tail=b"junk") + ("bytes",),
    "data and size": binary([({**bin_input("seed", "INT64", [3], np.int64)[0], "data": [3]}, b"\0" * 8)])
    + ("seed",),
    "binary NaN class": binary([bin_input("class_label", "FP32", [np.nan], np.float32)]) + ("class_label",),
    "binary 1.5 class": binary([bin_input("class_label", "FP32", [1.5], np.float32)]) + ("class_label",),
    "binary BOOL steps": binary([bin_input("steps", "BOOL", [True], np.bool_)]) + ("steps",),
    "binary NaN guidance": binary([bin_input("guidance_scale", "FP32", [np.nan], np.float32)])
    + ("guidance_scale",),
    "header past the end": (
        infer(tensor()),
        {"Inference-Header-Content-Length": "99999"},
        "Inference-Header",
    ),
    "header negative": (infer(tensor()), {"Inference-Header-Content-Length": "-1"}, "Inference-Header"),
    "header not a number": (infer(tensor()), {"Inference-Header-Content-Length": "abc"}, "Inference-Header"),
    "header signed": (infer(tensor()), {"Inference-Header-Content-Length": "+5"}, "Inference-Header"),
    "header cuts the JSON": (infer(tensor()), {"Inference-Header-Content-Length": "10"}, "JSON"),
    "header huge": (infer(tensor()), {"Inference-Header-Content-Length": "9" * 40}, "Inference-Header"),
}


@pytest.mark.parametrize("case", V2_BAD)
def test_v2_bad_input_is_400_naming_it(server, case):
    body, headers, needle = V2_BAD[case]
    r = httpx.post(server.url + "/v2/models/digits/infer", content=body, headers={**AUTH, **headers})
    assert r.status_code == 400, r.text
    assert needle in strict_json(r.content)["error"], r.text


def test_v2_whole_floats_and_any_int_width_still_work(server):
    def samples(label: dict) -> np.ndarray:
        body = infer(
            tensor("seed", data=[3]), tensor("steps", "INT32", data=[2]), label, outputs=[{"name": "samples"}]
        )
        r = httpx.post(server.url + "/v2/models/digits/infer", content=body, headers=AUTH)
        assert r.status_code == 200, r.text
        return np.asarray(r.json()["outputs"][0]["data"], np.float32)

    ref = samples(tensor("class_label", "INT32", data=[6]))
    np.testing.assert_array_equal(samples(tensor("class_label", "FP32", data=[6.0])), ref)
    np.testing.assert_array_equal(samples(tensor("class_label", "UINT8", data=[6])), ref)


def test_v2_body_limit_errors_are_v2_shaped(server):
    r = httpx.post(server.url + "/v2/models/digits/infer", content=b"x" * 9000, headers=AUTH)
    assert r.status_code == 413 and "8192" in r.json()["error"]


# ------------------------------------------------------------------------------------------------ metrics
def test_unknown_model_names_mint_no_series(bare):
    httpx.post(bare.url + "/v1/generate", json={"model": "primer"})  # the one "" series for 404s
    httpx.post(bare.url + "/v2/models/primer/infer", content=infer(tensor()))
    before = httpx.get(bare.url + "/metrics").text
    names = [f"m-{uuid.uuid4().hex}" for _ in range(300)]
    with httpx.Client(base_url=bare.url) as c:
        for i, name in enumerate(names):
            r = (
                c.post("/v1/generate", json={"model": name})
                if i % 2
                else c.post(f"/v2/models/{name}/infer", content=infer(tensor()))
            )
            assert r.status_code == 404, r.text
    after = httpx.get(bare.url + "/metrics").text
    assert series(after) == series(before)
    assert len(after) < len(before) + 1024 and not any(n in after for n in names)


def test_v2_400_is_recorded_as_400(bare):
    before = httpx.get(bare.url + "/metrics").text
    r = httpx.post(bare.url + "/v2/models/digits/infer", content=infer(tensor("steps", "INT32", data=[9])))
    assert r.status_code == 400 and "steps" in r.json()["error"]
    after = httpx.get(bare.url + "/metrics").text
    assert request_counts(after, 400) == request_counts(before, 400) + 1
    assert request_counts(after, 422) == request_counts(before, 422)


# ------------------------------------------------------------------------------------------------ OpenAPI
def test_openapi_declares_api_key_security_only_when_a_key_is_set(server, bare):
    keyed = httpx.get(server.url + "/openapi.json").json()
    assert keyed["components"].get("securitySchemes")
    assert keyed["paths"]["/v1/generate"]["post"].get("security")
    assert keyed["paths"]["/v2/models/{name}/infer"]["post"].get("security")
    open_ = httpx.get(bare.url + "/openapi.json").json()
    assert "securitySchemes" not in open_.get("components", {})
    assert not any("security" in op for ops in open_["paths"].values() for op in ops.values())


def test_openapi_declares_v2_errors(server):
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    responses = paths["/v2/models/{name}/infer"]["post"]["responses"]
    assert set(responses) >= {"200", "400", "401", "404", "408", "413", "429", "503", "504"}
    assert "422" not in responses  # v2 reports invalid input as 400
    assert responses["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/V2Error")
    assert "404" in paths["/v2/models/{name}"]["get"]["responses"]


# ------------------------------------------------------------------------------------------------ limits
def test_half_sent_headers_close_after_the_header_timeout(bare):
    half, silent = Raw(bare.url), Raw(bare.url)
    half.send(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
    t_half, t_silent = half.closed_within(HEADER_TIMEOUT + 5), silent.closed_within(HEADER_TIMEOUT + 5)
    assert t_half is not None and 0.5 * HEADER_TIMEOUT < t_half < HEADER_TIMEOUT + 3
    assert t_silent is not None and t_silent < HEADER_TIMEOUT + 3
    trickle = Raw(bare.url)  # a byte at a time, each in time, the whole too late
    t0, sent = time.monotonic(), 0
    with pytest.raises(OSError):
        for byte in b"GET /healthz HTTP/1.1\r\nHost: " + b"x" * 200 + b"\r\n\r\n":
            trickle.send(bytes([byte]))
            sent += 1
            time.sleep(0.05)
        trickle.response()
    assert time.monotonic() - t0 < HEADER_TIMEOUT + 3 and sent < 100


def test_idle_keep_alive_follows_keep_alive_not_the_header_timeout(bare):
    """--keep-alive (5 s default) governs an idle connection; the next request's header deadline starts
    with its first byte."""
    conn = Raw(bare.url)
    try:
        assert conn.request("GET", "/healthz")[0] == 200
        time.sleep(2 * HEADER_TIMEOUT)  # idle, within the keep-alive
        assert conn.request("GET", "/healthz")[0] == 200
        conn.send(b"GET /healthz HTTP/1.1\r\n")  # the next request's headers, half-sent
        t = conn.closed_within(HEADER_TIMEOUT + 5)
        assert t is not None and 0.5 * HEADER_TIMEOUT < t < HEADER_TIMEOUT + 3
    finally:
        conn.close()


@pytest.mark.parametrize("path,key", [("/v1/generate", "detail"), ("/v2/models/digits/infer", "error")])
def test_half_sent_body_gets_408(bare, path, key):
    conn = Raw(bare.url)
    t0 = time.monotonic()
    conn.send(f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n".encode() + b'{"st')
    status, headers, body = conn.response()
    assert status == 408 and key in json.loads(body) and headers["connection"] == "close"
    assert 0.5 * BODY_TIMEOUT < time.monotonic() - t0 < BODY_TIMEOUT + 3
    assert conn.closed_within(3) is not None


def _reset(s: socket.socket) -> bool | None:
    """True: the server reset the connection (refused); False: it closed it (header timeout); None: open."""
    if not select.select([s], [], [], 0)[0]:
        return None
    try:
        return None if s.recv(1) else False
    except ConnectionResetError:
        return True


def test_connections_over_the_cap_are_refused_and_the_server_recovers(bare):
    time.sleep(0.3)  # earlier tests' connections are gone
    held = []
    try:
        states: dict[int, bool | None] = {}
        for i in range(MAX_CONNECTIONS + 4):
            s = socket.socket()
            held.append(s)
            try:
                s.settimeout(5)
                s.connect(("127.0.0.1", bare.port))
                s.sendall(b"GET /healthz HTTP/1.1\r\n")  # half-sent: held until the header timeout
            except ConnectionResetError:  # refused (reset) before its bytes went out
                states[i] = True
        end = time.monotonic() + 5
        while sum(v is True for v in states.values()) < 4 and time.monotonic() < end:
            states |= {i: r for i, s in enumerate(held) if i not in states and (r := _reset(s)) is not None}
            time.sleep(0.05)
        refused = sorted(i for i, v in states.items() if v)
        assert refused == list(range(MAX_CONNECTIONS, MAX_CONNECTIONS + 4)), states  # the first 8 were served
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    assert httpx.get(bare.url + "/healthz").status_code == 200  # a fresh connection is served again


def test_oversized_headers_get_431(bare):
    conn = Raw(bare.url)
    conn.send(b"GET /healthz HTTP/1.1\r\nHost: test\r\n" + (b"X-Pad: " + b"a" * 8000 + b"\r\n") * 9)  # 72 KB
    status, headers, body = conn.response()
    assert status == 431 and headers["connection"] == "close" and b"65536" in body
    assert conn.closed_within(3) is not None


def test_endless_headers_are_cut_off_and_memory_stays_bounded(bare):
    (pid,) = api_pids(bare)
    rss0 = rss_mb(pid)
    conn = Raw(bare.url)
    conn.send(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
    chunk = (b"X-Pad: " + b"a" * 8000 + b"\r\n") * 64
    sent = 0
    with pytest.raises(OSError):
        while sent < 256 * 2**20:  # 256 MB of headers within the header timeout, if the server takes them
            conn.send(chunk)
            sent += len(chunk)
    assert sent < 32 * 2**20, f"the server took {sent >> 20} MB of headers"  # socket buffers: a few MB
    assert rss_mb(pid) < rss0 + 32
    assert httpx.get(bare.url + "/healthz").status_code == 200
