"""Users' models (tests/usermodels.py, not flowmap nets) behind flowmap's net interface: exact answers of
the analytic Gaussian in every parameterisation and time convention, Euler/Heun for velocity models, the
re-noising sampler for a sigma-parameterised consistency function, a DiT-style image model, and the
TorchScript / ONNX forms with a manifest."""

from __future__ import annotations

import json

import pytest
import torch
import usermodels as um

from flowmap.checkpoint import load_model
from flowmap.generate import generate, generate_seeded
from flowmap.samplers import make_noise
from flowmap.user import UserModelError, UserSpec

torch.set_num_threads(1)


def exact_sample(z: torch.Tensor) -> torch.Tensor:
    return um.M + um.SD * z


@pytest.mark.parametrize("factory", ["gauss_flow_map", "gauss_meanflow"])
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_gaussian_flow_maps_are_exact(factory, steps):
    model = load_model(f"usermodels:{factory}")
    z = make_noise(64, [2], 3)
    assert torch.allclose(generate(model, steps, z), exact_sample(z), atol=1e-5)


def test_velocity_model_is_euler_at_the_requested_steps():
    """An independent Euler recurrence on the module's own velocity; many steps reach the exact answer."""
    model, z = load_model("usermodels:gauss_velocity"), make_noise(32, [2], 1)
    x, grid = z.clone(), torch.linspace(1, 0, 5)
    for a, b in zip(grid[:-1], grid[1:], strict=True):
        x = x + (b - a) * um.exact_velocity(x, torch.full((32,), float(a)))
    assert torch.allclose(generate(model, 4, z), x, atol=1e-6)
    assert not torch.allclose(x, exact_sample(z), atol=1e-2)  # 4 Euler steps are not exact
    assert torch.allclose(generate(model, 400, z), exact_sample(z), atol=2e-2)


def test_heun_is_second_order():
    """Heun (last step Euler, EDM Alg. 1) errs less than Euler at 8 steps, and far less at 32."""
    euler, heun, z = (
        load_model("usermodels:gauss_velocity"),
        load_model("usermodels:gauss_velocity_heun"),
        None,
    )
    z = make_noise(64, [2], 2)

    def err(m, k):
        return float((generate(m, k, z) - exact_sample(z)).abs().max())

    assert err(heun, 8) < 0.5 * err(euler, 8)
    assert err(heun, 32) < 0.2 * err(euler, 32)


def test_sigma_consistency_one_step_and_renoising_sampler():
    """EDM-time consistency function: one step from sigma_max * z is M + SD z up to the sigma_max
    truncation (|M| SD / sigma_max); the re-noising sampler's samples have the data's mean and std."""
    model = load_model("usermodels:gauss_sigma")
    assert model.config["method"] == "consistency"
    z = make_noise(64, [2], 4)
    assert torch.allclose(generate(model, 1, z), exact_sample(z), atol=0.02)
    x = generate_seeded(model, 4, 4000, 5, sampler="stochastic")
    assert torch.allclose(x.mean(0), um.M, atol=0.05)
    assert torch.allclose(x.std(0), torch.full((2,), um.SD), atol=0.05)


def test_sigma_flow_map_composes_exactly_and_lands_on_the_data():
    """EDM-time flow map: 1, 2 and 4 jumps agree (the state rescaling x_sigma = x_t / (1 - t) is exact
    in both directions) and land on M + SD z up to the sigma_max truncation."""
    model, z = load_model("usermodels:gauss_sigma_flow_map"), make_noise(64, [2], 6)
    one = generate(model, 1, z)
    assert torch.allclose(one, exact_sample(z), atol=0.02)
    for steps in (2, 4):
        assert torch.allclose(generate(model, steps, z), one, atol=1e-4)


def test_sigma_velocity_with_heun_converges_to_the_data():
    model, z = load_model("usermodels:gauss_sigma_velocity"), make_noise(64, [2], 7)
    err = [float((generate(model, k, z) - exact_sample(z)).abs().max()) for k in (4, 32, 128)]
    assert err[0] > err[1] > err[2] and err[2] < 0.03


def test_tiny_dit_image_model_serves_every_step_count_and_guidance():
    model = load_model("usermodels:tiny_dit")
    assert (model.shape, model.num_classes, model.name) == ([1, 8, 8], 10, "dit")
    for steps in (1, 3):
        x = generate_seeded(model, steps, 5, 0, class_label=2, guidance=2.0)
        assert x.shape == (5, 1, 8, 8) and bool(torch.isfinite(x).all())


def test_torchscript_file_with_manifest(tmp_path):
    traced = torch.jit.trace(
        um.GaussFlowMap(), (torch.randn(3, 2), torch.rand(3), torch.rand(3), torch.zeros(3).long())
    )
    traced.save(str(tmp_path / "g.pt"))
    (tmp_path / "g.json").write_text(json.dumps({"shape": [2], "parameterisation": "flow_map"}))
    model = load_model(str(tmp_path / "g.pt"))
    z = make_noise(16, [2], 0)
    assert model.name == "g" and torch.allclose(generate(model, 2, z), exact_sample(z), atol=1e-5)


def test_onnx_file_with_manifest(tmp_path):
    pytest.importorskip("onnxruntime")
    args = (torch.randn(3, 2), torch.rand(3), torch.rand(3), torch.zeros(3).long())
    torch.onnx.export(
        um.GaussFlowMap(),
        args,
        str(tmp_path / "g.onnx"),
        input_names=["x", "s", "t", "y"],
        dynamic_axes={k: {0: "b"} for k in ("x", "s", "t", "y")},
        dynamo=False,
    )
    (tmp_path / "g.json").write_text(json.dumps({"shape": [2], "parameterisation": "flow_map", "name": "go"}))
    model = load_model(str(tmp_path / "g.onnx"))
    z = make_noise(16, [2], 0)
    assert model.name == "go" and torch.allclose(generate(model, 4, z), exact_sample(z), atol=1e-5)


def test_files_without_manifest_or_not_torchscript_are_refused(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "p.pt")  # a pickle: never unpickled
    with pytest.raises(UserModelError, match="no manifest"):
        load_model(str(tmp_path / "p.pt"))
    (tmp_path / "p.json").write_text(json.dumps({"shape": [2], "parameterisation": "velocity"}))
    with pytest.raises(UserModelError, match="not a TorchScript file"):
        load_model(str(tmp_path / "p.pt"))


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"shape": [], "parameterisation": "velocity"}, "shape"),
        ({"shape": [2], "parameterisation": "score"}, "parameterisation"),
        ({"shape": [2], "parameterisation": "velocity", "time": "vp"}, "time"),
        ({"shape": [2], "parameterisation": "velocity", "num_classes": -1}, "num_classes"),
        ({"shape": [2], "parameterisation": "velocity", "colour": 1}, "unknown spec field"),
    ],
)
def test_spec_fields_are_checked(bad, match):
    with pytest.raises(UserModelError, match=match):
        UserSpec.of(bad, "m")
