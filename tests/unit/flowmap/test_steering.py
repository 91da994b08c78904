import pytest
import torch

from flowmap.checkpoint import load_model
from flowmap.data import GMM8_STD, gmm8_means
from flowmap.metrics import energy_distance
from flowmap.reward import GMM8Mode, gmm8_mode_tilted
from flowmap.samplers import make_noise, sample_flowmap, uniform_grid
from flowmap.steering import CallCounter, SteerSpec, sample_guided, sample_particles, steer


@pytest.fixture(scope="module")
def gmm8():
    return load_model("gmm8")


def right(x):
    return x[:, 0]


def tilted_linear(scale: float, n: int, g: torch.Generator) -> torch.Tensor:
    """Exact draws from gmm8(x) exp(scale * x_0): means shift by scale std^2, weights ~ exp(scale mu_j0)."""
    mu = gmm8_means(torch.float32)
    j = torch.multinomial(torch.softmax(scale * mu[:, 0], 0), n, replacement=True, generator=g)
    return mu[j] + torch.tensor([scale * GMM8_STD**2, 0.0]) + GMM8_STD * torch.randn(n, 2, generator=g)


def nearest_mode(x):
    return torch.cdist(x, gmm8_means(torch.float32)).argmin(1)


def test_sir_one_step_matches_the_exact_tilted_distribution(gmm8):
    n, p, scale = 2000, 32, 1.0
    g = torch.Generator().manual_seed(1)
    x = sample_particles(gmm8.net, make_noise(n * p, [2], 0), uniform_grid(1), right, scale, p, generator=g)
    truth = tilted_linear(scale, 4000, torch.Generator().manual_seed(2))
    plain = sample_flowmap(gmm8.net, make_noise(n, [2], 3), uniform_grid(1))
    assert energy_distance(plain, truth) > 0.3  # the tilt is far from the data
    # floor: SIR of exact data reaches 0.001 at 32 particles; the 1-step model's own error ~0.02 at 512
    assert energy_distance(x, truth) < 0.045
    want = torch.bincount(nearest_mode(truth), minlength=8).double() / len(truth)
    got = torch.bincount(nearest_mode(x), minlength=8).double() / len(x)
    assert (got - want).abs().max() < 0.08  # mode 0 holds 0.41 of the tilt, 0.125 of the data


@pytest.mark.parametrize("lookahead", ["flowmap", "denoiser"])
def test_sir_two_steps_and_the_baseline_approach_the_tilt(gmm8, lookahead):
    n, p, scale = 1000, 16, 1.0
    g = torch.Generator().manual_seed(1)
    noise = make_noise(n * p, [2], 0)
    x = sample_particles(gmm8.net, noise, uniform_grid(2), right, scale, p, lookahead, generator=g)
    truth = tilted_linear(scale, 4000, torch.Generator().manual_seed(2))
    assert energy_distance(x, truth) < 0.05


def test_mode_reward_puts_95_percent_in_the_mode_at_one_step(gmm8):
    res = steer(gmm8.net, [2], 1, make_noise(1000 * 32, [2], 0), SteerSpec("mode:3", 1.0, "sir", 32))
    assert float((nearest_mode(res.x) == 3).double().mean()) >= 0.95
    truth = gmm8_mode_tilted(3, 1.0, 4000, torch.Generator().manual_seed(0))
    assert float((nearest_mode(truth) == 3).double().mean()) > 0.999
    assert energy_distance(res.x, truth) < 0.05
    assert res.calls_per_sample == 32


def test_gmm8_mode_tilted_has_the_product_moments():
    x = gmm8_mode_tilted(0, 1.0, 20000, torch.Generator().manual_seed(0)).double()
    assert torch.allclose(x.mean(0), torch.tensor([2.0, 0.0], dtype=torch.float64), atol=0.01)
    assert abs(float(x.var(0).mean()) - GMM8_STD**2 / 2) < 0.002
    assert float((GMM8Mode(0)(x.float()) > GMM8Mode(1)(x.float())).double().mean()) > 0.999


def test_best_of_n_keeps_the_best_final_sample(gmm8):
    n, p = 50, 8
    noise = make_noise(n * p, [2], 0)
    x = sample_particles(gmm8.net, noise, uniform_grid(1), right, 1.0, p, select="best")
    plain = sample_flowmap(gmm8.net, noise, uniform_grid(1)).view(n, p, 2)
    best = plain[torch.arange(n), plain[..., 0].argmax(1)]
    assert torch.allclose(x, best)


@pytest.mark.parametrize("lookahead", ["flowmap", "denoiser"])
def test_gradient_guidance_moves_samples_along_the_reward(gmm8, lookahead):
    noise = make_noise(2000, [2], 0)
    grid = uniform_grid(2)
    plain = sample_flowmap(gmm8.net, noise, grid)
    same = sample_guided(gmm8.net, noise, grid, right, 0.0, lookahead)
    assert torch.allclose(same, plain)
    means = [
        float(sample_guided(gmm8.net, noise, grid, right, s, lookahead)[:, 0].mean()) for s in (0.2, 0.5)
    ]
    assert float(plain[:, 0].mean()) < means[0] < means[1]


@pytest.mark.parametrize(
    "method, lookahead, steps, calls",
    [
        ("sir", "flowmap", 2, 2 * 4),
        ("sir", "denoiser", 2, 2 * 2 * 4),
        ("best", "flowmap", 1, 4),
        ("guide", "flowmap", 2, 4),
    ],
)
def test_network_calls_per_sample(gmm8, method, lookahead, steps, calls):
    spec = SteerSpec("mode:0", 1.0, method, 4, lookahead)
    rows = 10 * (1 if method == "guide" else 4)
    res = steer(gmm8.net, [2], steps, make_noise(rows, [2], 0), spec)
    assert len(res.x) == 10 and res.calls_per_sample == calls
    counter = CallCounter(gmm8.net)
    sample_flowmap(counter, make_noise(10, [2], 0), uniform_grid(steps))
    assert counter.rows == 10 * steps


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "x"}, "steer method"),
        ({"lookahead": "y"}, "look-ahead"),
        ({"scale": -1.0}, "scale"),
        ({"scale": float("nan")}, "scale"),
        ({"particles": 0}, "particles"),
    ],
)
def test_bad_spec(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SteerSpec("mode:0", **kwargs)


def test_guidance_iters_cost_one_call_each(gmm8):
    spec = SteerSpec("mode:0", 0.1, "guide", 1, "flowmap", iters=3)
    res = steer(gmm8.net, [2], 2, make_noise(10, [2], 0), spec)
    assert res.calls_per_sample == 2 * (3 + 1) and res.grads_per_sample == 6
