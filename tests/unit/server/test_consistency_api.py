"""A `ct` checkpoint served through the API (v1 and v2) by a real engine core with the eager engine:
the "sampler" option, the model's default in /v1/models, and results equal to `flowmap sample
--sampler stochastic` for the same seed at 1-4 steps, whatever else shares the batch."""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import pytest
import torch

from flowmap.checkpoint import save_checkpoint
from flowmap.generate import generate
from flowmap.nets import build_net
from flowmap.samplers import make_noise
from tests.unit.server.inprocess import InProcess, serve

SHAPE, C = [1, 4, 4], 3
ARCH = {"name": "mlp", "shape": SHAPE, "width": 32, "depth": 1, "num_classes": C}
torch.set_num_threads(1)


def checkpoint(path, method: str, interpolant: str = "linear") -> str:
    torch.manual_seed(0)
    data = {"name": "toy", "shape": SHAPE, "num_classes": C, "image": True}
    config = {"name": path.stem, "arch": ARCH, "data": data, "method": method, "interpolant": interpolant}
    save_checkpoint(path, build_net(ARCH), config)
    return str(path)


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    return serve(checkpoint(tmp_path_factory.mktemp("ct") / "ct.safetensors", "ct"))


def npy(b64: str) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(b64)), allow_pickle=False)


def together(client: InProcess, http, bodies: list[dict]) -> list:
    """Post the bodies so that they all queue first, then run in shared batches."""

    async def go():
        client.paused = True
        tasks = [asyncio.ensure_future(http.post("/v1/generate", json=b)) for b in bodies]
        await asyncio.sleep(0.05)
        client.paused = False
        client.pump()
        return await asyncio.gather(*tasks)

    return asyncio.run(go())


def test_models_list_the_consistency_default(ct):
    _, _, http = ct
    info = asyncio.run(http.get("/v1/models")).json()["models"][0]
    assert info["method"] == "ct" and info["default_sampler"] == "consistency"
    assert info["samplers"] == ["flowmap", "consistency"]


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
def test_ct_serves_what_flowmap_sample_gives_whatever_the_batch(ct, steps):
    model, client, http = ct
    target = {"steps": steps, "num_samples": 3, "seed": 5, "output": "npy"}
    mates = [
        {"steps": 4, "num_samples": 2, "seed": 9, "output": "npy", "sampler": "flowmap"},
        {"steps": 3, "num_samples": 4, "seed": 1, "class_label": 2, "guidance_scale": 2.0, "output": "npy"},
        {"steps": 2, "num_samples": 1, "seed": 8, "output": "npy", "sampler": "consistency"},
    ]
    (alone,) = together(client, http, [target])
    mixed = together(client, http, [mates[0], target, *mates[1:]])[1]
    with torch.inference_mode():
        want = generate(model, steps, make_noise(3, SHAPE, 5), sampler="stochastic", seed=5).numpy()
    for r in (alone, mixed):
        assert r.status_code == 200, r.text
        assert r.json()["sampler"] == "consistency"  # the model's default
        np.testing.assert_allclose(npy(r.json()["array"]), want, rtol=0, atol=1e-5)
    # CPU matmuls of other batch sizes may differ in the last bit (1e-7 here); the fake-engine tests in
    # test_consistency.py show the sampler itself is exact
    np.testing.assert_allclose(npy(alone.json()["array"]), npy(mixed.json()["array"]), rtol=0, atol=1e-5)


def test_the_flowmap_sampler_can_be_asked_for(ct):
    model, client, http = ct
    (r,) = together(
        client, http, [{"steps": 3, "num_samples": 2, "seed": 4, "sampler": "flowmap", "output": "npy"}]
    )
    with torch.inference_mode():
        want = generate(model, 3, make_noise(2, SHAPE, 4), sampler="flowmap").numpy()
    assert r.json()["sampler"] == "flowmap"
    np.testing.assert_allclose(npy(r.json()["array"]), want, rtol=0, atol=1e-5)


def test_v2_takes_the_sampler_as_a_request_parameter(ct):
    model, _, http = ct
    inputs = [
        {"name": "seed", "shape": [1], "datatype": "INT64", "data": [6]},
        {"name": "steps", "shape": [1], "datatype": "INT32", "data": [2]},
        {"name": "num_samples", "shape": [1], "datatype": "INT32", "data": [2]},
    ]
    url = f"/v2/models/{model.name}/infer"
    ok = asyncio.run(http.post(url, json={"inputs": inputs, "parameters": {"sampler": "consistency"}}))
    bad = asyncio.run(http.post(url, json={"inputs": inputs, "parameters": {"sampler": "ddim"}}))
    assert ok.status_code == 200, ok.text
    (samples,) = [o for o in ok.json()["outputs"] if o["name"] == "samples"]
    with torch.inference_mode():
        want = generate(model, 2, make_noise(2, SHAPE, 6), sampler="stochastic", seed=6).numpy()
    np.testing.assert_allclose(np.array(samples["data"]).reshape(want.shape), want, rtol=0, atol=1e-5)
    assert bad.status_code == 400 and "'sampler'" in bad.json()["error"]


def test_an_unknown_sampler_is_a_422_naming_the_field(ct):
    _, _, http = ct
    r = asyncio.run(http.post("/v1/generate", json={"sampler": "ddim"}))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "sampler"


def test_a_trig_model_serves_only_the_flow_map(tmp_path):
    model, _, http = serve(checkpoint(tmp_path / "trig.safetensors", "ct", interpolant="trig"))
    info = asyncio.run(http.get("/v1/models")).json()["models"][0]
    assert info["default_sampler"] == "flowmap" and info["samplers"] == ["flowmap"]
    r = asyncio.run(http.post("/v1/generate", json={"sampler": "consistency"}))
    assert r.status_code == 422 and "sampler" in r.text and "serves flowmap" in r.text
