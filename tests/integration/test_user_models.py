"""Users' models (tests/usermodels.py, factories the operator names) in a real server process on the
default engine: a model failing its load checks is reported and the others serve; v1 with mixed step
counts equals `flowmap sample`, v2, metrics and the playground."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
import torch

from engines import default_engine
from flowmap.checkpoint import load_model
from flowmap.generate import generate
from flowmap.samplers import make_noise
from tests.integration.conftest import ROOT, ServerProcess

MODELS = ["usermodels:tiny_dit", "usermodels:nan_output", "usermodels:gauss_flow_map"]


@pytest.fixture(scope="module")
def users():
    env = {"PYTHONPATH": f"{ROOT / 'tests'}:{ROOT}"}
    args = [a for m in MODELS for a in ("--model", m)] + ["--max-steps", "4"]
    s = ServerProcess(args, env=env).wait_ready(timeout=240)
    yield s
    assert s.stop() == 0


def npy(b64: str) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(b64)), allow_pickle=False)


def test_the_failed_model_is_reported_and_the_others_serve(users):
    listed = httpx.get(users.url + "/v1/models").json()
    assert [m["name"] for m in listed["models"]] == ["dit", "gauss"]
    assert listed["models"][0]["engine"] == default_engine("cpu")  # exported and parity-checked
    assert "NaN or inf" in listed["failed"]["usermodels:nan_output"]
    assert "usermodels:nan_output" in users.output() and httpx.get(users.url + "/readyz").status_code == 200


def test_v1_mixed_steps_equal_flowmap_sample(users):
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    model = load_model("usermodels:tiny_dit")
    bodies = [
        {"model": "dit", "steps": k, "num_samples": 2, "seed": k, "class_label": k, "output": "npy"}
        for k in (1, 2, 3, 4)
    ]
    with httpx.Client(base_url=users.url, timeout=60) as c:
        for b in bodies:
            r = c.post("/v1/generate", json=b)
            assert r.status_code == 200, r.text
            with torch.inference_mode():
                want = generate(model, b["steps"], make_noise(2, [1, 8, 8], b["seed"]), b["class_label"])
            np.testing.assert_allclose(npy(r.json()["array"]), want.numpy(), rtol=0, atol=1e-4)


def test_v2_metrics_and_playground(users):
    inputs = [{"name": "seed", "shape": [1], "datatype": "INT64", "data": [3]}]
    r = httpx.post(users.url + "/v2/models/gauss/infer", json={"inputs": inputs}, timeout=60)
    assert r.status_code == 200, r.text
    (samples,) = [o for o in r.json()["outputs"] if o["name"] == "samples"]
    want = torch.tensor([1.0, -2.0]) + 0.5 * make_noise(1, [2], 3)
    np.testing.assert_allclose(np.array(samples["data"]).reshape(1, 2), want.numpy(), atol=1e-4)
    assert 'model="gauss"' in httpx.get(users.url + "/metrics").text
    assert httpx.get(users.url + "/").status_code == 200
    assert httpx.get(users.url + "/v2/models/dit/ready").status_code == 200


def test_a_lone_model_failing_its_checks_stops_the_server_with_exit_2():
    env = {"PYTHONPATH": f"{ROOT / 'tests'}:{ROOT}"}
    s = ServerProcess(["--model", "usermodels:rows_depend"], env=env)
    code = s.proc.wait(120)
    assert code == 2, s.output()
    assert "usermodels:rows_depend" in s.output() and "rows are not independent" in s.output()
