"""The "steer" option through the API (v1 and v2) with a real engine core in this process (eager engine):
results equal `flowmap sample --steer` (flowmap.steering.steer_model) for the same seed whatever shares
the batch, 422s naming the field, the cost in the response and in flowmap_steer_network_evaluations_total."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from flowmap.samplers import make_noise
from flowmap.steering import SteerSpec, steer_model
from server.common.metrics import Metrics
from tests.unit.server import inprocess
from tests.unit.server.test_consistency_api import SHAPE, checkpoint, npy, together

torch.set_num_threads(1)


def serve(spec: str, **overrides):
    metrics = Metrics()
    return (*inprocess.serve(spec, metrics, **({"max_particles": 8} | overrides)), metrics)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return serve(checkpoint(tmp_path_factory.mktemp("steer") / "toy.safetensors", "esd"))


def library(model, steps, n, seed, spec: SteerSpec, class_label=None, guidance=1.0):
    noise = make_noise(n * spec.particles, SHAPE, seed)
    with torch.inference_mode():
        return steer_model(model, steps, noise, spec, class_label, guidance, seed)


@pytest.mark.parametrize("method", ["sir", "best"])
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_steered_requests_equal_the_library_whatever_the_batch(toy, steps, method):
    model, client, http, _ = toy
    steer = {"reward": "ink", "scale": 20.0, "particles": 4, "method": method}
    target = {"steps": steps, "num_samples": 3, "seed": 5, "class_label": 1, "output": "npy", "steer": steer}
    mates = [
        {"steps": 4, "num_samples": 2, "seed": 9, "output": "npy"},
        {"steps": 3, "num_samples": 2, "seed": 1, "class_label": 2, "guidance_scale": 2.0, "output": "npy"},
        {
            "steps": 2,
            "num_samples": 2,
            "seed": 8,
            "output": "npy",
            "steer": {"reward": "ink", "particles": 3},
        },
    ]
    (alone,) = together(client, http, [target])
    mixed = together(client, http, [mates[0], target, *mates[1:]])
    want = library(model, steps, 3, 5, SteerSpec("ink", 20.0, method, 4), class_label=1).x.numpy()
    for r in (alone, mixed[1]):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["sampler"] == "consistency" and body["num_samples"] == 3
        assert body["network_calls_per_sample"] == steps * 4
        np.testing.assert_allclose(npy(body["array"]), want, rtol=0, atol=1e-5)
    assert all(r.status_code == 200 for r in mixed), [r.text for r in mixed]
    assert mixed[2].json()["network_calls_per_sample"] == 3 * 2  # a guided row counts twice


def test_steering_raises_the_reward(toy):
    _, client, http, _ = toy
    body = {"steps": 2, "num_samples": 8, "seed": 3, "output": "npy"}
    plain, steered = together(
        client, http, [body, body | {"steer": {"reward": "ink", "scale": 50.0, "particles": 8}}]
    )
    ink = lambda r: ((np.clip(npy(r.json()["array"]), -1, 1) + 1) / 2).mean()
    assert ink(steered) > ink(plain) + 0.02


def test_the_cost_is_counted_by_model_and_builtin_reward(toy):
    model, client, http, metrics = toy
    before = metrics.registry.get_sample_value(
        "flowmap_steer_network_evaluations_total", {"model": model.name, "reward": "ink"}
    )
    steer = {"reward": "ink", "particles": 5}
    (r,) = together(
        client, http, [{"steps": 3, "num_samples": 2, "seed": 0, "output": "npy", "steer": steer}]
    )
    assert r.status_code == 200, r.text
    after = metrics.registry.get_sample_value(
        "flowmap_steer_network_evaluations_total", {"model": model.name, "reward": "ink"}
    )
    assert after - (before or 0.0) == 3 * 5 * 2


@pytest.mark.parametrize(
    "steer, field, text",
    [
        ({"reward": "os:system"}, ["steer", "reward"], "unknown reward"),
        ({"reward": "flowmap.reward:Ink"}, ["steer", "reward"], "unknown reward"),
        ({"reward": "class:3"}, ["steer", "reward"], "digits model"),
        ({"reward": "mode:1"}, ["steer", "reward"], "gmm8"),
        ({"reward": "ink:2"}, ["steer", "reward"], "no argument"),
        ({"reward": "ink", "method": "guide"}, ["steer", "method"], "not served"),
        ({"reward": "ink", "method": "beam"}, ["steer", "method"], ""),
        ({"reward": "ink", "particles": 0}, ["steer", "particles"], ""),
        ({"reward": "ink", "particles": 9}, ["steer", "particles"], ""),
        ({"reward": "ink", "particles": 2.0}, ["steer", "particles"], ""),
        ({"reward": "ink", "scale": -1.0}, ["steer", "scale"], ""),
        ({"reward": "ink", "scale": 1e9}, ["steer", "scale"], ""),
        ({"reward": "ink", "temperature": 1}, ["steer", "temperature"], ""),
        ({"scale": 1.0}, ["steer", "reward"], ""),
    ],
)
def test_bad_steer_options_are_422s_naming_the_field(toy, steer, field, text):
    _, _, http, _ = toy
    r = asyncio.run(http.post("/v1/generate", json={"output": "npy", "steer": steer}))
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["loc"][1:] == field and text in detail["msg"]


def test_steer_needs_the_consistency_sampler_and_fits_the_row_limit(toy):
    _, _, http, _ = toy
    steer = {"reward": "ink", "particles": 8}
    r = asyncio.run(http.post("/v1/generate", json={"output": "npy", "sampler": "flowmap", "steer": steer}))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "sampler"]
    r = asyncio.run(http.post("/v1/generate", json={"output": "npy", "num_samples": 16, "steer": steer}))
    assert r.status_code == 200, r.text  # 128 rows <= max_steer_rows 512
    _, _, small, _ = serve(checkpoint_path(http), max_steer_rows=100)
    r = asyncio.run(small.post("/v1/generate", json={"output": "npy", "num_samples": 16, "steer": steer}))
    assert r.status_code == 422 and "128 rows" in r.json()["detail"][0]["msg"]


def checkpoint_path(_http) -> str:
    import tempfile
    from pathlib import Path

    return checkpoint(Path(tempfile.mkdtemp()) / "toy.safetensors", "esd")


def test_a_model_without_the_look_ahead_sampler_refuses_steer(tmp_path):
    _, _, http, _ = serve(checkpoint(tmp_path / "trig.safetensors", "esd", interpolant="trig"))
    r = asyncio.run(http.post("/v1/generate", json={"output": "npy", "steer": {"reward": "ink"}}))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "steer"]
    assert "look-ahead" in r.json()["detail"][0]["msg"]


def test_an_operator_listed_user_reward_is_served_and_others_are_not(tmp_path):
    spec = "flowmap.reward:Ink"  # a class: called with x it would fail; a listed spec is imported by the core
    _, _, http, _ = serve(
        checkpoint(tmp_path / "u.safetensors", "esd"),
        steer_user_rewards=["tests.unit.server.test_steer_api:brightness"],
    )
    ok = asyncio.run(
        http.post(
            "/v1/generate",
            json={"output": "npy", "steer": {"reward": "tests.unit.server.test_steer_api:brightness"}},
        )
    )
    assert ok.status_code == 200, ok.text
    bad = asyncio.run(http.post("/v1/generate", json={"output": "npy", "steer": {"reward": spec}}))
    assert bad.status_code == 422 and "unknown reward" in bad.text


def brightness(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1)


def test_v2_takes_steer_as_a_request_parameter(toy):
    model, _, http, _ = toy
    inputs = [
        {"name": "seed", "shape": [1], "datatype": "INT64", "data": [6]},
        {"name": "steps", "shape": [1], "datatype": "INT32", "data": [2]},
        {"name": "num_samples", "shape": [1], "datatype": "INT32", "data": [2]},
    ]
    url = f"/v2/models/{model.name}/infer"
    steer = {"reward": "ink", "scale": 5.0, "particles": 3}
    ok = asyncio.run(http.post(url, json={"inputs": inputs, "parameters": {"steer": steer}}))
    assert ok.status_code == 200, ok.text
    (samples,) = [o for o in ok.json()["outputs"] if o["name"] == "samples"]
    want = library(model, 2, 2, 6, SteerSpec("ink", 5.0, "sir", 3), class_label=None).x.numpy()
    np.testing.assert_allclose(np.array(samples["data"]).reshape(want.shape), want, rtol=0, atol=1e-5)
    assert ok.json()["parameters"]["network_calls_per_sample"] == 6
    for bad in ({"reward": "os:system"}, "ink", {"reward": "ink", "particles": "3"}):
        r = asyncio.run(http.post(url, json={"inputs": inputs, "parameters": {"steer": bad}}))
        assert r.status_code == 400 and "steer" in r.json()["error"], r.text
