import torch

from flowmap.data import (
    GMM8_STD,
    gmm8_exact_flow,
    gmm8_means,
    gmm8_sample,
    gmm8_variance_trace,
    gmm8_velocity,
)
from flowmap.interpolants import Trig
from flowmap.samplers import sample_heun, uniform_grid


def test_sample_matches_spec():
    x = gmm8_sample(40000, torch.Generator().manual_seed(0)).double()
    assert x.shape == (40000, 2)
    nearest = torch.cdist(x, gmm8_means()).argmin(1)
    resid = x - gmm8_means()[nearest]
    assert abs(resid.std().item() - GMM8_STD) < 0.005
    assert torch.bincount(nearest, minlength=8).min() > 4500
    assert abs(((x - x.mean(0)) ** 2).sum(1).mean().item() - gmm8_variance_trace()) < 0.08


def test_exact_velocity_matches_monte_carlo():
    # E[eps - x0 | x_t = x] by self-normalised importance sampling over x0 ~ gmm8, at points x_t
    # drawn from the path itself; tolerance from the estimator's own standard error
    g = torch.Generator().manual_seed(1)
    x0 = gmm8_sample(400000, g).double()
    for t in (0.2, 0.5, 0.8):
        x = (1 - t) * gmm8_sample(6, g).double() + t * torch.randn(6, 2, generator=g, dtype=torch.float64)
        logw = -((x[:, None] - (1 - t) * x0[None]) ** 2).sum(-1) / (2 * t**2)  # log p(x_t | x0)
        w = torch.softmax(logw, dim=1)[..., None]
        f = (x[:, None] - (1 - t) * x0[None]) / t - x0[None]  # eps - x0
        mc = (w * f).sum(1)
        stderr = ((w**2) * (f - mc[:, None]) ** 2).sum(1).sqrt()
        exact = gmm8_velocity(x, torch.full((6,), t, dtype=torch.float64))
        assert ((mc - exact).abs() <= 5 * stderr + 2e-3).all(), (t, mc, exact, stderr)


def test_heun_on_exact_velocity_reproduces_exact_flow():
    x1 = torch.randn(256, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = gmm8_exact_flow(x1, 1.0, 0.0, steps=1000)
    u = lambda x, s, t, y: gmm8_velocity(x, s)  # diagonal velocity u(x, t, t) = v(x, t)
    heun = sample_heun(u, x1, uniform_grid(400).double())
    assert ((heun - exact) ** 2).sum(1).mean().sqrt() < 1e-4


def test_exact_flow_identity_and_semigroup():
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(gmm8_exact_flow(x, 0.4, 0.4, steps=10), x)
    direct = gmm8_exact_flow(x, 1.0, 0.0, steps=600)
    composed = gmm8_exact_flow(gmm8_exact_flow(x, 1.0, 0.5, steps=300), 0.5, 0.0, steps=300)
    assert torch.allclose(direct, composed, atol=1e-6)


def test_exact_flow_pushes_noise_to_data():
    x1 = torch.randn(4000, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x0 = gmm8_exact_flow(x1, 1.0, 0.0, steps=400)
    radius = x0.norm(dim=1)
    assert abs(radius.mean().item() - 2.0) < 0.05
    assert abs(((x0 - x0.mean(0)) ** 2).sum(1).mean().item() - gmm8_variance_trace()) < 0.25


def test_trig_exact_flow_also_lands_on_the_mixture():
    x1 = torch.randn(4000, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x0 = gmm8_exact_flow(x1, 1.0, 0.0, steps=400, interp=Trig())
    resid = x0 - gmm8_means()[torch.cdist(x0, gmm8_means()).argmin(1)]
    assert abs(resid.std().item() - GMM8_STD) < 0.01
