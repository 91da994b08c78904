"""Users' models (tests/usermodels.py) served through the API by a real engine core (eager engine): step-
level batches of mixed step counts, guidance and samplers give what `flowmap sample` gives on each request
alone; the consistency function's default sampler; exact answers of the analytic flow map through v2;
"auto" steps."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
import usermodels as um

from flowmap.generate import generate
from flowmap.samplers import make_noise
from tests.unit.server.inprocess import serve
from tests.unit.server.test_consistency_api import npy, together

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dit():
    return serve("usermodels:tiny_dit")


def test_dit_mixed_step_batches_equal_flowmap_sample(dit):
    model, client, http = dit
    bodies = [
        {"steps": 1, "num_samples": 2, "seed": 1, "output": "npy"},
        {"steps": 4, "num_samples": 3, "seed": 2, "class_label": 7, "guidance_scale": 2.0, "output": "npy"},
        {"steps": 3, "num_samples": 1, "seed": 3, "class_label": 4, "output": "npy"},
        {"steps": 2, "num_samples": 2, "seed": 4, "output": "npy"},
    ]
    mixed = together(client, http, bodies)
    for b, r in zip(bodies, mixed, strict=True):
        assert r.status_code == 200, r.text
        (alone,) = together(client, http, [b])
        noise = make_noise(b["num_samples"], [1, 8, 8], b["seed"])
        with torch.inference_mode():
            want = generate(model, b["steps"], noise, b.get("class_label"), b.get("guidance_scale", 1.0))
        np.testing.assert_allclose(npy(r.json()["array"]), want.numpy(), rtol=0, atol=1e-5)
        np.testing.assert_allclose(npy(alone.json()["array"]), npy(r.json()["array"]), rtol=0, atol=1e-5)


def test_dit_lists_and_serves_png_and_auto_steps(dit):
    _, _, http = dit
    info = asyncio.run(http.get("/v1/models")).json()["models"][0]
    assert (info["name"], info["shape"], info["num_classes"], info["method"]) == (
        "dit",
        [1, 8, 8],
        10,
        "average_velocity",
    )
    assert info["baked_guidance_scale"] == 1.5
    r = asyncio.run(http.post("/v1/generate", json={"steps": "auto", "deadline_ms": 5000, "num_samples": 2}))
    assert r.status_code == 200, r.text
    assert 1 <= r.json()["steps"] <= 4 and len(r.json()["images"]) == 2


def test_sigma_consistency_defaults_to_the_renoising_sampler():
    model, client, http = serve("usermodels:gauss_sigma")
    info = asyncio.run(http.get("/v1/models")).json()["models"][0]
    assert info["default_sampler"] == "consistency"
    bodies = [{"steps": k, "num_samples": 3, "seed": k, "output": "npy"} for k in (1, 2, 4)]
    for b, r in zip(bodies, together(client, http, bodies), strict=True):
        assert r.json()["sampler"] == "consistency"
        noise = make_noise(3, [2], b["seed"])
        want = generate(model, b["steps"], noise, sampler="stochastic", seed=b["seed"]).numpy()
        np.testing.assert_allclose(npy(r.json()["array"]), want, rtol=0, atol=1e-5)


def test_v2_infer_on_the_analytic_flow_map_is_exact():
    _, _, http = serve("usermodels:gauss_meanflow")
    inputs = [
        {"name": "seed", "shape": [1], "datatype": "INT64", "data": [6]},
        {"name": "steps", "shape": [1], "datatype": "INT32", "data": [3]},
        {"name": "num_samples", "shape": [1], "datatype": "INT32", "data": [4]},
    ]
    r = asyncio.run(http.post("/v2/models/gauss-mf/infer", json={"inputs": inputs}))
    assert r.status_code == 200, r.text
    (samples,) = [o for o in r.json()["outputs"] if o["name"] == "samples"]
    want = um.M + um.SD * make_noise(4, [2], 6)
    np.testing.assert_allclose(np.array(samples["data"]).reshape(4, 2), want.numpy(), rtol=0, atol=1e-5)


def test_stream_previews_of_the_exact_flow_map():
    """Each preview is x - s u(x, s, t) with the step's own u (server.core_process.engine_core): computed
    here from the exact map; the last one, a true jump to data, is the final sample M + SD z."""
    from tests.unit.server.test_service_app import run
    from tests.unit.server.test_stream_api import events

    _, _, http = serve("usermodels:gauss_flow_map")
    body = {"steps": 3, "num_samples": 4, "seed": 2, "output": "npy", "stream": True}
    status, _, got = run(events(http, "/v1/generate", body))
    assert status == 200 and [e for e, _ in got] == ["preview"] * 3 + ["result"]
    x, grid = make_noise(4, [2], 2), torch.linspace(1, 0, 4)
    for (_, d), s, t in zip(got[:3], grid[:-1], grid[1:], strict=True):
        s_, t_ = torch.full((4,), float(s)), torch.full((4,), float(t))
        after = um.exact_map(x, s_, t_)
        preview = x - s * (after - x) / (t - s)
        np.testing.assert_allclose(np.array(d["samples"], np.float32), preview.numpy(), atol=1e-5)
        x = after
    want = (um.M + um.SD * make_noise(4, [2], 2)).numpy()
    np.testing.assert_allclose(np.array(got[2][1]["samples"], np.float32), want, atol=1e-5)
    np.testing.assert_allclose(npy(got[-1][1]["array"]), want, atol=1e-5)


def test_a_client_cannot_name_a_factory(dit):
    """Only the operator's --model imports code; a request's "model" is a served name or a 404."""
    _, _, http = dit
    for name in ("usermodels:gauss_sigma", "os:getcwd", "usermodels:tiny_dit"):
        r = asyncio.run(http.post("/v1/generate", json={"model": name}))
        assert r.status_code == 404 and "unknown model" in r.text


def test_a_user_model_that_does_not_export_is_served_on_eager_unless_an_engine_was_named():
    from engines import EngineError, default_engine
    from server.common.settings import ServerSettings
    from server.core_process.build import build_core

    if default_engine("cpu") == "eager":
        pytest.skip("no compiled engine installed: eager is the default anyway")
    _, _, info = build_core("usermodels:row_loop", ServerSettings(device="cpu", max_batch_size=8))
    assert info.engine == "eager"
    with pytest.raises(EngineError, match="row-loop"):
        build_core(
            "usermodels:row_loop", ServerSettings(device="cpu", engine="torchscript", max_batch_size=8)
        )
