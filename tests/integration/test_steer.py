"""The "steer" option against a real server (API processes without torch, one engine core per model):
steered samples equal `flowmap sample --steer` for the same seed, bad options are 422s naming the field,
and the cost shows in the response and in /metrics."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
import torch

from flowmap.checkpoint import load_model
from flowmap.samplers import make_noise
from flowmap.steering import SteerSpec, steer_model


def npy(b64: str) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(b64)), allow_pickle=False)


def cli_steered(path, steps: int, n: int, seed: int, spec: SteerSpec) -> np.ndarray:
    """What `flowmap sample --model M --steps K --n N --seed S --steer R --particles P` computes."""
    model = load_model(str(path))
    with torch.inference_mode():
        noise = make_noise(n * spec.particles, model.shape, seed)
        return steer_model(model, steps, noise, spec, seed=seed).x.numpy()


@pytest.mark.parametrize(
    "model, reward, method",
    [("digits", "class:7", "sir"), ("digits", "ink", "best"), ("gmm8", "mode:2", "sir")],
)
def test_steered_samples_equal_the_cli(client, checkpoints, model, reward, method):
    steer = {"reward": reward, "scale": 4.0, "particles": 4, "method": method}
    body = {"model": model, "steps": 2, "num_samples": 3, "seed": 7, "output": "npy", "steer": steer}
    r = client.post("/v1/generate", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert (
        out["num_samples"] == 3 and out["sampler"] == "consistency" and out["network_calls_per_sample"] == 8
    )
    want = cli_steered(checkpoints[model], 2, 3, 7, SteerSpec(reward, 4.0, method, 4))
    np.testing.assert_allclose(npy(out["array"]), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "model, steer, loc",
    [
        ("gmm8", {"reward": "class:3"}, ["steer", "reward"]),
        ("digits", {"reward": "mode:1"}, ["steer", "reward"]),
        ("digits", {"reward": "os:system"}, ["steer", "reward"]),
        ("digits", {"reward": "class:3", "particles": 0}, ["steer", "particles"]),
        ("digits", {"reward": "class:3", "particles": 17}, ["steer", "particles"]),
        ("digits", {"reward": "class:3", "scale": 1e9}, ["steer", "scale"]),
        ("digits", {"reward": "class:3", "method": "guide"}, ["steer", "method"]),
    ],
)
def test_bad_steer_options_are_422s(client, model, steer, loc):
    r = client.post("/v1/generate", json={"model": model, "output": "npy", "steer": steer})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][1:] == loc


def test_the_cost_metric_appears(server, client):
    body = {
        "steps": 3,
        "num_samples": 2,
        "seed": 1,
        "output": "npy",
        "steer": {"reward": "class:1", "particles": 5},
    }
    assert client.post("/v1/generate", json=body).status_code == 200
    lines = [
        line
        for line in httpx.get(server.url + "/metrics").text.splitlines()
        if line.startswith("flowmap_steer_network_evaluations_total{")
    ]
    assert any('model="digits"' in line and 'reward="class"' in line for line in lines), lines
    assert all(float(line.split()[-1]) >= 30 for line in lines if 'reward="class"' in line)
