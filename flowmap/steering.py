"""Reward steering at sampling time: pure functions of (u, noise, grid, reward), like flowmap.samplers.

The look-ahead is the flow map's own jump to data, X_{t,0}(x_t) = x_t - t u(x_t, t, 0): one network
call from any x_t to the sample it will become (FMTT, Sabour et al. 2025; FMRG). The baseline replaces
it by the one-step denoiser estimate x_t - t u(x_t, t, t) from the diagonal velocity, as diffusion
guidance does (e.g. DPS, TDS). Both feed the same two steering methods:
- `sample_guided`: gradient guidance; before each jump x_t moves by scale * t^2 * grad r(look-ahead(x_t))
  (clipped), `iters` times;
- `sample_particles`: N particles per sample, re-noised between steps (consistency-style, gamma = 1),
  weighted by exp(scale * r(look-ahead)) increments and resampled at each step ("sir": multinomial,
  sequential importance resampling; "best": keep the best particle, greedy best-of-N search).
`steer` wraps them for a loaded model and counts network calls (forward passes) per sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from flowmap.interpolants import Linear
from flowmap.reward import Reward, evaluate_reward, make_reward
from flowmap.samplers import FlowFn, flow_step, sample_keys, uniform_grid

METHODS = ("guide", "sir", "best")
LOOKAHEADS = ("flowmap", "denoiser")


def _full(x: Tensor, value: float) -> Tensor:
    return torch.full((x.shape[0],), float(value), dtype=x.dtype, device=x.device)


def lookahead_flowmap(u: FlowFn, x: Tensor, t: float, y: Tensor | None) -> Tensor:
    """X_{t,0}(x): the flow map's jump to data (one network call)."""
    return flow_step(u, x, _full(x, t), _full(x, 0.0), y)


def lookahead_denoiser(u: FlowFn, x: Tensor, t: float, y: Tensor | None) -> Tensor:
    """x - t u(x, t, t): one Euler step of the diagonal velocity to t = 0 (the denoiser estimate)."""
    return x - t * u(x, _full(x, t), _full(x, t), y)


LOOKAHEAD: dict[str, Callable] = {"flowmap": lookahead_flowmap, "denoiser": lookahead_denoiser}


def reward_grad(u: FlowFn, x: Tensor, t: float, reward: Reward, lookahead: str, y) -> Tensor:
    """grad_x r(look-ahead(x)) by autograd through the network, per sample: [B, *shape]."""
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        r = evaluate_reward(reward, LOOKAHEAD[lookahead](u, xg, t, y))
        (g,) = torch.autograd.grad(r.sum(), xg)
    return g


def clip_rms(g: Tensor, limit: float = 1.0) -> Tensor:
    """Scale each sample's gradient down so its root-mean-square entry is at most `limit`."""
    rms = g.flatten(1).pow(2).mean(1).sqrt().reshape(-1, *([1] * (g.dim() - 1)))
    return g / (rms / limit).clamp(min=1.0)


def sample_guided(
    u: FlowFn,
    x: Tensor,
    grid: Tensor,
    reward: Reward,
    scale: float,
    lookahead: str = "flowmap",
    y: Tensor | None = None,
    iters: int = 1,
) -> Tensor:
    """Gradient guidance: `iters` times x_k <- x_k + scale * t_k^2 * clip(grad r(look-ahead(x_k))),
    then the jump X_{t_k, t_{k+1}}.

    t^2 = sigma_t^2 turns the reward gradient into the change of the score of the tilted density
    p(x_0) exp(scale * r(x_0)) when the look-ahead is taken as x_0 (linear interpolant). The gradient
    is clipped to an RMS of 1 per entry (the noise's own scale): near a decision boundary a
    classifier's gradient through the map is large enough to throw x_k far off the noise shell."""
    for s, t in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
        for _ in range(iters):
            x = x + scale * s**2 * clip_rms(reward_grad(u, x, s, reward, lookahead, y))
        with torch.no_grad():
            x = flow_step(u, x, _full(x, s), _full(x, t), y)
    return x


def resample(logw: Tensor, select: str, generator: torch.Generator | None) -> Tensor:
    """Row indices [B * N] into particles grouped [B, N] by log-weights logw: [B, N]."""
    b, n = logw.shape
    if select == "best":
        pick = logw.argmax(1, keepdim=True).expand(b, n)
    else:
        probs = torch.softmax(logw.double(), dim=1)
        pick = torch.multinomial(probs, n, replacement=True, generator=generator)
    return (pick + n * torch.arange(b, device=logw.device)[:, None]).flatten()


RESAMPLE_COUNTER = 1 << 20  # Philox counter offset of the resampling draws (step k's re-noise uses k)


def keyed_uniforms(keys: Tensor, k: int, n: int) -> Tensor:
    """Uniforms [G, n] float64 in (0, 1): Phi of the Philox normals keyed by keys[g] at counter
    k + RESAMPLE_COUNTER (kernels.noise), so group g's draws depend on (keys[g], k) only."""
    import kernels

    z = kernels.noise(keys, k + RESAMPLE_COUNTER, n).double()
    return 0.5 * torch.special.erfc(-z / math.sqrt(2.0))


def resample_keyed(logw: Tensor, select: str, keys: Tensor, k: int) -> Tensor:
    """`resample` with multinomial draws from keyed_uniforms(keys [B], k, N) by inverse CDF: the same
    indices in the library and the server whatever else is computed alongside."""
    b, n = logw.shape
    logw = torch.nan_to_num(logw.double(), nan=-1e300, posinf=1e300, neginf=-1e300)  # never NaN weights
    if select == "best":
        pick = logw.argmax(1, keepdim=True).expand(b, n)
    else:
        cdf = torch.softmax(logw.double(), dim=1).cumsum(1)
        u = keyed_uniforms(keys, k, n).to(cdf.device) * cdf[:, -1:]
        pick = torch.searchsorted(cdf, u, right=True).clamp(max=n - 1)
    return (pick + n * torch.arange(b, device=logw.device)[:, None]).flatten()


def _renoise(x0: Tensor, t: float, interpolant, generator, draws=None) -> Tensor:
    if draws is not None:
        fresh = draws.to(x0.device, x0.dtype)
    else:
        fresh = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    tt = torch.tensor(t, dtype=x0.dtype)
    return interpolant.alpha(tt) * x0 + interpolant.sigma(tt) * fresh


@torch.no_grad()
def sample_particles(
    u: FlowFn,
    x: Tensor,
    grid: Tensor,
    reward: Reward,
    scale: float,
    particles: int,
    lookahead: str = "flowmap",
    select: str = "sir",
    y: Tensor | None = None,
    generator: torch.Generator | None = None,
    interpolant=Linear(),
    keys: Tensor | None = None,
) -> Tensor:
    """Particles x: [B * N, ...] (sample i owns rows i*N .. i*N+N-1) -> samples [B, ...].

    Step k: x0 = X_{t_k,0}(x_k); potential l_k = scale * r(look-ahead(x_k)); resample by
    l_k - l_{k-1}; then re-noise x0 to t_{k+1} with fresh noise (or stop at t = 0). With the flow-map
    look-ahead, l_k is r(x0) itself (no extra call) and the last potential is the final reward, so
    "sir" targets p(x_0) exp(scale * r(x_0)) as N grows (exactly so at one step, for an exact map).

    keys [B * N] (flowmap.samplers.sample_keys): draw row j's re-noise at step k from Philox keyed by
    keys[j] (as the server's consistency rows do) and group i's resampling from keys[i*N] at counter
    k + RESAMPLE_COUNTER, so every sample depends on its own keys only (the server's steered rows give
    the same result); without keys, both come from `generator`."""
    n = particles
    gkeys = keys.view(-1, n)[:, 0] if keys is not None else None
    pick = lambda logw, k: (
        resample(logw, select, generator) if keys is None else resample_keyed(logw, select, gkeys, k)
    )
    prev = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    steps = len(grid) - 1
    for k, (s, t) in enumerate(zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True)):
        x0 = lookahead_flowmap(u, x, s, y)
        est = x0 if lookahead == "flowmap" else lookahead_denoiser(u, x, s, y)
        pot = scale * evaluate_reward(reward, est).double()
        idx = pick((pot - prev).view(-1, n), k)
        x0, prev = x0[idx], pot[idx]
        if t == 0.0:
            break
        x = _renoise(x0, t, interpolant, generator, None if keys is None else _keyed_draws(keys, k, x0))
    if lookahead != "flowmap":  # the final reward is not yet in the weights
        pot = scale * evaluate_reward(reward, x0).double()
        x0 = x0[pick((pot - prev).view(-1, n), steps)]
    return x0[::n]


def _keyed_draws(keys: Tensor, k: int, like: Tensor) -> Tensor:
    """Row j's standard normals at step k from Philox keyed by keys[j] (flowmap.generate.renoise_draws)."""
    from flowmap.generate import renoise_draws

    return renoise_draws(keys, like.shape)(k)


class CallCounter:
    """Wraps u(x, s, t, y) and counts the rows it evaluates (forward passes)."""

    def __init__(self, u: FlowFn):
        self.u, self.rows = u, 0

    def __call__(self, x, s, t, y=None):
        self.rows += len(x)
        return self.u(x, s, t, y)


@dataclass
class SteerSpec:
    """What to steer toward and how: a reward spec (flowmap.reward), a scale and a method."""

    reward: str
    scale: float = 1.0
    method: str = "sir"  # guide, sir (sequential importance resampling) or best (best-of-N search)
    particles: int = 8  # per sample; guide uses one trajectory
    lookahead: str = "flowmap"  # flowmap (X_{t,0}) or denoiser (x - t u(x, t, t), the baseline)
    iters: int = 1  # guide: gradient steps per time step (each one more network call and backward)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"steer method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.lookahead not in LOOKAHEADS:
            raise ValueError(f"look-ahead must be one of {', '.join(LOOKAHEADS)}, got {self.lookahead!r}")
        if not self.scale == self.scale or abs(self.scale) == float("inf") or self.scale < 0:
            raise ValueError(f"steer scale must be a finite number >= 0, got {self.scale}")
        if self.particles < 1 or self.iters < 1:
            raise ValueError(f"steer particles and iters must be >= 1, got {self.particles}, {self.iters}")


@dataclass
class Steered:
    """Steered samples and their cost: forward network calls and reward gradients per sample."""

    x: Tensor
    calls_per_sample: float
    grads_per_sample: float


def steer(
    u: FlowFn,
    shape: list[int],
    steps: int,
    noise: Tensor,
    spec: SteerSpec,
    y: Tensor | None = None,
    seed: int = 0,
    interpolant=Linear(),
) -> Steered:
    """Steered samples for noise [B * P, *shape], P = spec.particles for sir/best, 1 for guide."""
    reward = make_reward(spec.reward, shape)
    grid, count = uniform_grid(steps), CallCounter(u)
    p = 1 if spec.method == "guide" else spec.particles
    if len(noise) % p:
        raise ValueError(f"{len(noise)} noise rows are not a multiple of {p} particles")
    b = len(noise) // p
    if spec.method == "guide":
        x = sample_guided(count, noise, grid, reward, spec.scale, spec.lookahead, y, spec.iters)
        return Steered(x.detach(), count.rows / b, float(steps * spec.iters))
    yp = y.repeat_interleave(p) if y is not None and len(y) == b else y
    keys = sample_keys(seed, len(noise))  # per-row keyed draws: the server's steered rows agree
    x = sample_particles(
        count, noise, grid, reward, spec.scale, p, spec.lookahead, spec.method, yp, None, interpolant, keys
    )
    return Steered(x, count.rows / b, 0.0)


def steer_noise_rows(spec: SteerSpec, n: int) -> int:
    """Noise rows that `steer` needs for n samples."""
    return n * (1 if spec.method == "guide" else spec.particles)


def steer_model(model, steps: int, noise: Tensor, spec: SteerSpec, class_label=None, guidance=1.0, seed=0):
    """`steer` for a loaded model (flowmap.checkpoint.Model): labels, guidance and interpolant from it;
    noise holds n * particles rows (n * 1 for guide)."""
    from flowmap.generate import labels
    from flowmap.interpolants import get_interpolant
    from flowmap.samplers import guided

    p = 1 if spec.method == "guide" else spec.particles
    y = labels(model, len(noise) // p, class_label)
    u = guided(model.net, guidance, model.num_classes) if y is not None else model.net
    interp = get_interpolant(model.config.get("interpolant", "linear"))
    return steer(u, model.shape, steps, noise, spec, y, seed, interp)
