"""Every v1 route and health/metrics against a real server process on loopback."""

from __future__ import annotations

import base64
import io
import re

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from flowmap.checkpoint import load_model
from flowmap.data import to_uint8
from flowmap.generate import generate
from flowmap.samplers import make_noise


def cli_samples(path, steps: int, n: int, seed: int, class_label=None, guidance: float = 1.0) -> torch.Tensor:
    """What `flowmap sample --model M --steps K --n N --seed S [--class C] [--guidance W]` computes."""
    model = load_model(str(path))
    return generate(model, steps, make_noise(n, model.shape, seed), class_label, guidance)


def npy(b64: str) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(b64)), allow_pickle=False)


def test_health_and_docs_are_open(server):
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert httpx.get(server.url + path).status_code == 200, path
    assert httpx.get(server.url + "/readyz").json() == {"status": "ready"}


def test_api_key(server, client):
    assert httpx.get(server.url + "/v1/models").status_code == 401
    bad = httpx.post(server.url + "/v1/generate", json={}, headers={"X-API-Key": "nope"})
    assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/models").status_code == 200
    assert httpx.get(server.url + "/v1/models", headers={"X-API-Key": "test-key"}).status_code == 200


def test_models(client):
    body = client.get("/v1/models").json()
    assert body["default"] == "digits"
    by_name = {m["name"]: m for m in body["models"]}
    assert by_name["digits"]["shape"] == [1, 8, 8] and by_name["digits"]["num_classes"] == 10
    assert by_name["gmm8"]["image"] is False and by_name["digits"]["engine"] == "eager"


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
def test_npy_equals_cli(client, checkpoints, steps):
    r = client.post("/v1/generate", json={"steps": steps, "num_samples": 5, "seed": 11, "output": "npy"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["steps"] == steps and body["class_labels"] == [0, 1, 2, 3, 4]  # cycled, as the CLI
    x = npy(body["array"])
    assert x.dtype == np.float32 and x.shape == (5, 1, 8, 8)
    np.testing.assert_allclose(x, cli_samples(checkpoints["digits"], steps, 5, 11).numpy(), rtol=0, atol=1e-5)
    assert set(body["timings"]) == {"queue_ms", "compute_ms", "total_ms"}


def test_png_and_guidance_equal_cli(client, checkpoints):
    r = client.post(
        "/v1/generate",
        json={"steps": 2, "num_samples": 3, "seed": 5, "class_label": 7, "guidance_scale": 2.5},
    )
    assert r.status_code == 200, r.text
    imgs = [np.asarray(Image.open(io.BytesIO(base64.b64decode(s)))) for s in r.json()["images"]]
    assert all(i.shape == (8, 8) and i.dtype == np.uint8 for i in imgs)
    ref = to_uint8(cli_samples(checkpoints["digits"], 2, 3, 5, 7, 2.5))[:, 0]  # [3, 8, 8]
    diff = np.abs(np.stack(imgs).astype(int) - ref.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # a rounding tie may flip in the last float bit


def test_per_sample_classes_and_unconditional_model(client, checkpoints):
    r = client.post(
        "/v1/generate", json={"num_samples": 2, "class_label": [3, 9], "seed": 1, "output": "npy"}
    )
    assert r.json()["class_labels"] == [3, 9]
    g = client.post(
        "/v1/generate", json={"model": "gmm8", "steps": 2, "num_samples": 4, "seed": 2, "output": "npy"}
    )
    assert g.status_code == 200 and g.json()["class_labels"] is None
    np.testing.assert_allclose(
        npy(g.json()["array"]), cli_samples(checkpoints["gmm8"], 2, 4, 2).numpy(), rtol=0, atol=1e-5
    )


def test_auto_steps(client):
    r = client.post("/v1/generate", json={"steps": "auto", "deadline_ms": 5000, "seed": 1})
    assert r.status_code == 200 and r.json()["steps"] == 4  # idle server, generous deadline: the maximum
    r = client.post("/v1/generate", json={"steps": "auto", "seed": 1, "num_samples": 2})
    assert 1 <= r.json()["steps"] <= 4


def test_server_draws_a_seed_and_reports_it(client):
    a = client.post("/v1/generate", json={"output": "npy"}).json()
    b = client.post("/v1/generate", json={"output": "npy", "seed": a["seed"], "steps": a["steps"]}).json()
    np.testing.assert_array_equal(npy(a["array"]), npy(b["array"]))


BAD = [
    ({"steps": 0}, "steps"),
    ({"steps": 5}, "steps"),
    ({"steps": "many"}, "steps"),
    ({"num_samples": 0}, "num_samples"),
    ({"num_samples": 33}, "num_samples"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**64}, "seed"),
    ({"class_label": 10}, "class_label"),
    ({"class_label": -1}, "class_label"),
    ({"class_label": [1, 2], "num_samples": 3}, "class_label"),
    ({"guidance_scale": 1e9}, "guidance_scale"),
    ({"output": "gif"}, "output"),
    ({"deadline_ms": 0}, "deadline_ms"),
    ({"colour": "red"}, "colour"),
    ({"model": "gmm8", "class_label": 1, "output": "npy"}, "class_label"),
    ({"model": "gmm8", "guidance_scale": 2.0, "output": "npy"}, "guidance_scale"),
    ({"model": "gmm8"}, "output"),
]


@pytest.mark.parametrize("body,field", BAD)
def test_bad_input_is_422_naming_the_field(client, body, field):
    r = client.post("/v1/generate", json=body)
    assert r.status_code == 422, r.text
    assert any(field in [str(v) for v in d["loc"]] for d in r.json()["detail"]), r.text


def test_malformed_json_unknown_model_and_big_body(client):
    r = client.post("/v1/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    r = client.post("/v1/generate", json={"model": "cats"})
    assert r.status_code == 404 and "cats" in r.json()["detail"]
    r = client.post("/v1/generate", json={"model": "x" * 9000})
    assert r.status_code == 413
    r = client.post("/v1/generate", content=(b"x" * 1000 for _ in range(10)))  # chunked, no Content-Length
    assert r.status_code == 413
    assert client.get("/v1/nothing").status_code == 404


def test_metrics_names_and_histograms(server, client):
    client.post("/v1/generate", json={"steps": 2, "seed": 0})
    client.post("/v1/generate", json={"steps": 99})
    text = httpx.get(server.url + "/metrics").text
    for name in (
        "flowmap_request_duration_seconds_bucket",
        "flowmap_queue_wait_seconds_bucket",
        "flowmap_engine_call_seconds_bucket",
        "flowmap_batch_samples_bucket",
        "flowmap_samples_in_flight",
        "flowmap_queue_depth",
        "flowmap_network_evaluations_total",
        "flowmap_rejections_total",
        "flowmap_build_info",
    ):
        assert name in text, name
    assert 'flowmap_request_duration_seconds_count{model="digits",status="200",steps="2"}' in text
    assert 'flowmap_rejections_total{model="",reason="invalid"}' in text
    cap = re.search(r'^flowmap_batch_cap_rows\{model="digits"\} (\S+)$', text, re.M)
    assert cap and 1 <= float(cap.group(1)) <= 128  # the warm-up's choice, within --max-batch-size
    assert "summary" not in text.split("flowmap_request_duration_seconds")[1][:200]
