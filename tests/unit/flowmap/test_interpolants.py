import pytest
import torch

from flowmap.interpolants import get_interpolant, interpolate


@pytest.mark.parametrize("name", ["linear", "trig"])
def test_endpoints(name):
    it = get_interpolant(name)
    zero, one = torch.tensor(0.0), torch.tensor(1.0)
    assert torch.allclose(it.alpha(zero), one) and torch.allclose(it.sigma(zero), zero)
    assert torch.allclose(it.alpha(one), zero, atol=1e-7) and torch.allclose(it.sigma(one), one)


@pytest.mark.parametrize("name", ["linear", "trig"])
def test_derivatives_match_finite_differences(name):
    it = get_interpolant(name)
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    assert torch.allclose(it.d_alpha(t), (it.alpha(t + h) - it.alpha(t - h)) / (2 * h), atol=1e-6)
    assert torch.allclose(it.d_sigma(t), (it.sigma(t + h) - it.sigma(t - h)) / (2 * h), atol=1e-6)


@pytest.mark.parametrize("name", ["linear", "trig"])
def test_conditional_velocity_is_path_derivative(name):
    it = get_interpolant(name)
    x0, eps = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    t, h = torch.rand(5, dtype=torch.float64) * 0.9 + 0.05, 1e-6
    _, v = interpolate(it, x0, eps, t)
    xp, _ = interpolate(it, x0, eps, t + h)
    xm, _ = interpolate(it, x0, eps, t - h)
    assert torch.allclose(v, (xp - xm) / (2 * h), atol=1e-6)


def test_linear_velocity_is_eps_minus_x0():
    x0, eps = torch.randn(4, 2), torch.randn(4, 2)
    _, v = interpolate(get_interpolant("linear"), x0, eps, torch.rand(4))
    assert torch.allclose(v, eps - x0)


def test_unknown_interpolant():
    with pytest.raises(ValueError, match="unknown interpolant"):
        get_interpolant("cosine-ish")
