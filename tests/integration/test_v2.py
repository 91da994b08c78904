"""Open Inference Protocol v2 routes, exercised with the real tritonclient.http client."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest

tritonclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.integration.conftest import KEY  # noqa: E402


@pytest.fixture()
def triton(server):
    c = tritonclient.InferenceServerClient(server.url.removeprefix("http://"))
    yield c
    c.close()


HEADERS = {"Authorization": f"Bearer {KEY}"}


def inputs(seed=3, steps=2, n=4, label=None, binary=False):
    spec = [("seed", "INT64", seed), ("steps", "INT32", steps), ("num_samples", "INT32", n)]
    if label is not None:
        spec.append(("class_label", "INT32", label))
    out = []
    for name, dtype, value in spec:
        arr = np.array([value], dtype={"INT64": np.int64, "INT32": np.int32}[dtype])
        i = tritonclient.InferInput(name, [1], dtype)
        i.set_data_from_numpy(arr, binary_data=binary)
        out.append(i)
    return out


def v1(server, **body):
    r = httpx.post(server.url + "/v1/generate", json={"output": "npy", **body}, headers=HEADERS)
    return np.load(io.BytesIO(base64.b64decode(r.json()["array"])), allow_pickle=False)


def test_health_and_metadata(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("digits")
    meta = triton.get_model_metadata("digits", headers=HEADERS)
    assert {i["name"] for i in meta["inputs"]} >= {"seed", "steps", "num_samples", "class_label"}
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {"samples": "FP32", "images": "UINT8"}
    assert triton.get_server_metadata()["name"] == "flowmap"


@pytest.mark.parametrize("binary", [False, True])
def test_infer_matches_v1(server, triton, binary):
    outs = [tritonclient.InferRequestedOutput(n, binary_data=binary) for n in ("images", "samples")]
    # binary *inputs* are tested raw below: tritonclient 2.73 sends an int header its transport rejects
    res = triton.infer("digits", inputs(seed=3, steps=2, n=4, label=6), outputs=outs, headers=HEADERS)
    images, samples = res.as_numpy("images"), res.as_numpy("samples")
    assert images.dtype == np.uint8 and images.shape == (4, 8, 8, 1)
    np.testing.assert_allclose(samples, v1(server, seed=3, steps=2, num_samples=4, class_label=6), atol=1e-6)
    expect = np.round((np.clip(samples, -1, 1) + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)
    assert np.abs(images.astype(int) - expect.astype(int)).max() <= 1


def test_binary_input_extension(server):
    """Binary tensor extension: JSON header (Inference-Header-Content-Length bytes), then raw tensors."""
    tensors = [
        ("seed", "INT64", np.array([3], np.int64)),
        ("steps", "INT32", np.array([2], np.int32)),
        ("num_samples", "INT32", np.array([4], np.int32)),
        ("class_label", "INT32", np.array([6], np.int32)),
    ]
    head = {
        "inputs": [
            {"name": n, "shape": [1], "datatype": d, "parameters": {"binary_data_size": a.nbytes}}
            for n, d, a in tensors
        ],
        "outputs": [{"name": "samples", "parameters": {"binary_data": True}}],
    }
    header = json.dumps(head).encode()
    body = header + b"".join(a.tobytes() for _, _, a in tensors)
    r = httpx.post(
        server.url + "/v2/models/digits/infer",
        content=body,
        headers={**HEADERS, "Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    out = json.loads(r.content[:n])["outputs"][0]
    samples = np.frombuffer(r.content[n:], np.float32).reshape(out["shape"])
    np.testing.assert_allclose(samples, v1(server, seed=3, steps=2, num_samples=4, class_label=6), atol=1e-6)


def test_infer_default_outputs_unconditional_model(server, triton):
    res = triton.infer("gmm8", inputs(seed=1, steps=1, n=3), headers=HEADERS)
    assert res.as_numpy("samples").shape == (3, 2)
    assert res.get_response()["parameters"] == {"steps": 1, "seed": 1}


def test_errors(server, triton):
    with pytest.raises(InferenceServerException, match="unknown model"):
        triton.infer("cats", inputs(), headers=HEADERS)
    with pytest.raises(InferenceServerException, match="steps"):
        triton.infer("digits", inputs(steps=9), headers=HEADERS)
    with pytest.raises(InferenceServerException, match="class_label"):
        triton.infer("gmm8", inputs(label=2), headers=HEADERS)
    r = httpx.post(server.url + "/v2/models/digits/infer", content=b"[1, 2", headers=HEADERS)
    assert r.status_code == 400 and "error" in r.json()
    r = httpx.post(
        server.url + "/v2/models/digits/infer",
        headers=HEADERS,
        json={"inputs": [{"name": "seed", "shape": [2], "datatype": "INT64", "data": [1]}]},
    )
    assert r.status_code == 400 and "seed" in r.json()["error"]


INFER_BODY = {
    "inputs": [
        {"name": "seed", "shape": [1], "datatype": "INT64", "data": [3]},
        {"name": "steps", "shape": [1], "datatype": "INT32", "data": [1]},
        {"name": "num_samples", "shape": [1], "datatype": "INT32", "data": [2]},
    ]
}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key"},
        {"X-API-Key": "wrong-key"},
        {"Authorization": f"Basic {KEY}"},
    ],
    ids=["no-key", "wrong-bearer", "wrong-x-api-key", "not-bearer"],
)
def test_v2_without_the_key_is_401_with_an_error_body(server, headers):
    for method, path, kw in [
        ("POST", "/v2/models/digits/infer", {"json": INFER_BODY}),
        ("GET", "/v2/models/digits", {}),
    ]:
        r = httpx.request(method, server.url + path, headers=headers, **kw)
        assert r.status_code == 401, (method, path, r.status_code, r.text)
        body = r.json()  # the Open Inference Protocol error body: {"error": message}
        assert set(body) == {"error"} and "API key" in body["error"], body
        assert r.headers["www-authenticate"] == "Bearer"


def test_v2_401_reaches_tritonclient_and_the_key_lets_the_same_request_through(server, triton):
    with pytest.raises(InferenceServerException) as err:
        triton.infer("digits", inputs(seed=3, steps=1, n=2))  # no API key
    assert err.value.status() == "401" and "API key" in err.value.message(), str(err.value)
    for headers in (HEADERS, {"X-API-Key": KEY}):  # control: only the key differs
        r = httpx.post(server.url + "/v2/models/digits/infer", json=INFER_BODY, headers=headers)
        assert r.status_code == 200, r.text
        assert {o["name"] for o in r.json()["outputs"]} >= {"samples"}
