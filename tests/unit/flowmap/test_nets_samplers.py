import pytest
import torch

from flowmap.nets import build_net
from flowmap.samplers import (
    check_grid,
    flow_step,
    guided,
    make_noise,
    sample_euler,
    sample_flowmap,
    sample_heun,
    sample_stochastic,
    uniform_grid,
)

ARCHS = [
    {"name": "mlp", "shape": [2], "width": 32, "depth": 2, "num_classes": 0},
    {"name": "mlp", "shape": [1, 8, 8], "width": 32, "depth": 1, "num_classes": 10},
    {"name": "unet", "shape": [1, 8, 8], "width": 16, "num_classes": 10},
]


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a["name"] + str(a["shape"]))
def test_shapes_and_exact_identity_at_s_equals_t(arch):
    net = build_net(arch).eval()
    x = torch.randn(5, *arch["shape"])
    s = torch.rand(5)
    y = torch.randint(0, 10, (5,)) if arch["num_classes"] else None
    assert net(x, s, s, y).shape == x.shape
    assert torch.equal(flow_step(net, x, s, s, y), x)


def test_null_label_is_the_default_label():
    net = build_net(ARCHS[1]).eval()
    x, s, t = torch.randn(3, 1, 8, 8), torch.full((3,), 0.9), torch.full((3,), 0.1)
    assert torch.equal(net(x, s, t, None), net(x, s, t, torch.full((3,), 10)))


def test_grid():
    assert torch.allclose(uniform_grid(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    with pytest.raises(ValueError):
        uniform_grid(0)
    with pytest.raises(ValueError):
        check_grid(torch.tensor([0.0, 1.0]))


def _exact_linear_u(x, s, t, y):
    # flow of the point mass at c: x_t = (1 - t) c + t eps is straight, u = (x - c) / s
    return (x - 3.0) / s.reshape(-1, 1)


def test_samplers_on_a_known_straight_flow():
    x1 = torch.randn(7, 2)
    for k in (1, 3):
        assert torch.allclose(sample_flowmap(_exact_linear_u, x1, uniform_grid(k)), torch.full((7, 2), 3.0))
        assert torch.allclose(sample_euler(_exact_linear_u, x1, uniform_grid(k)), torch.full((7, 2), 3.0))
    assert torch.allclose(
        sample_heun(_exact_linear_u, x1, torch.tensor([1.0, 0.5, 0.25])), 3 + 0.25 * (x1 - 3)
    )


def test_explicit_grid_equals_composition():
    net = build_net(ARCHS[0]).eval()
    x = torch.randn(4, 2)
    grid = torch.tensor([1.0, 0.6, 0.0])
    a = sample_flowmap(net, x, grid)
    b = flow_step(
        net,
        flow_step(net, x, torch.full((4,), 1.0), torch.full((4,), 0.6)),
        torch.full((4,), 0.6),
        torch.zeros(4),
    )
    assert torch.allclose(a, b)


def test_stochastic_gamma_zero_is_deterministic_and_gamma_one_uses_fresh_noise():
    x = torch.randn(6, 2)
    a = sample_stochastic(_exact_linear_u, x, uniform_grid(3), gamma=0.0)
    assert torch.allclose(a, torch.full((6, 2), 3.0), atol=1e-5)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    net = build_net(ARCHS[0]).eval()
    with torch.no_grad():
        r1 = sample_stochastic(net, x, uniform_grid(3), gamma=1.0, generator=g1)
        r2 = sample_stochastic(net, x, uniform_grid(3), gamma=1.0, generator=g2)
    assert not torch.allclose(r1, r2)
    with pytest.raises(ValueError):
        sample_stochastic(net, x, uniform_grid(2), gamma=1.5)


def test_guidance_combines_conditional_and_null():
    calls = []

    def u(x, s, t, y):
        calls.append(len(x))
        return y.float().reshape(-1, 1).expand_as(x).clone()

    x, s = torch.randn(3, 2), torch.ones(3)
    y = torch.tensor([1, 2, 3])
    out = guided(u, 2.0, null_label=10)(x, s, s, y)
    assert calls == [6]  # one batched call for both halves
    assert torch.allclose(out[:, 0], 10 + 2.0 * (y.float() - 10))
    assert guided(u, 1.0, 10) is u


def test_noise_depends_only_on_seed():
    a = make_noise(8, [1, 8, 8], seed=5)
    assert torch.equal(a[:3], make_noise(3, [1, 8, 8], seed=5))
    assert not torch.equal(a, make_noise(8, [1, 8, 8], seed=6))
