"""Samplers: pure functions of (u, x, time grid, conditioning), in the style of k-diffusion.

`u` is any callable u(x, s, t, y) -> velocity-like tensor (DESIGN.md); X_{s,t}(x) = x + (t - s) u.
Grids run from t_0 = 1 (noise) down to t_K = 0 (data).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from flowmap.guidance import cfg_mix
from flowmap.interpolants import Linear, expand

FlowFn = Callable[..., Tensor]


def uniform_grid(steps: int, device=None) -> Tensor:
    """1 = t_0 > t_1 > ... > t_K = 0, uniform."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(1.0, 0.0, steps + 1, device=device)


def check_grid(grid: Tensor) -> Tensor:
    grid = torch.as_tensor(grid, dtype=torch.float32)
    if grid.dim() != 1 or len(grid) < 2 or not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError("time grid must be 1-D, strictly decreasing, with at least two points")
    return grid


def make_noise(n: int, shape, seed: int, device="cpu") -> Tensor:
    """Noise [n, *shape] drawn from one generator seeded with `seed` (the CLI and server agree)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn((n, *shape), generator=g).to(device)


SPLITMIX_GAMMA, MASK63 = 0x9E3779B97F4A7C15, (1 << 63) - 1


def sample_keys(seed: int, n: int) -> Tensor:
    """Per-sample 63-bit keys [n] int64, never 0, for a request's seed: the first n outputs of SplitMix64
    seeded with `seed` (Steele et al. 2014). Sample i's re-noising draws depend on (seed, i) only, so a
    sample's result never depends on its batch-mates (the CLI and the server agree)."""
    i = np.arange(1, n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(int(seed) & ((1 << 64) - 1)) + i * np.uint64(SPLITMIX_GAMMA)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    z = z & np.uint64(MASK63)
    return torch.from_numpy(
        np.where(z == 0, np.uint64(1), z).astype(np.int64)
    )  # never 0 (the server: no key)


def flow_step(u: FlowFn, x: Tensor, s: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
    """One flow-map jump X_{s,t}(x) = x + (t - s) * u(x, s, t, y) with per-sample s, t: [B]."""
    return x + expand(t - s, x) * u(x, s, t, y)


def _full(x: Tensor, value) -> Tensor:
    return torch.full((x.shape[0],), float(value), dtype=x.dtype, device=x.device)


def sample_flowmap(u: FlowFn, x: Tensor, grid: Tensor, y: Tensor | None = None) -> Tensor:
    """K-step flow-map sampling: x_{k+1} = X_{t_k, t_{k+1}}(x_k)."""
    for s, t in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
        x = flow_step(u, x, _full(x, s), _full(x, t), y)
    return x


def sample_euler(u: FlowFn, x: Tensor, grid: Tensor, y: Tensor | None = None) -> Tensor:
    """Teacher ODE sampler (Euler) on the diagonal velocity u(x, t, t, y)."""
    for s, t in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
        x = x + (t - s) * u(x, _full(x, s), _full(x, s), y)
    return x


def sample_heun(u: FlowFn, x: Tensor, grid: Tensor, y: Tensor | None = None) -> Tensor:
    """Teacher ODE sampler (Heun, 2nd order; EDM Alg. 1 without churn) on u(x, t, t, y)."""
    for s, t in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
        d = u(x, _full(x, s), _full(x, s), y)
        x_pred = x + (t - s) * d
        d2 = u(x_pred, _full(x, t), _full(x, t), y)
        x = x + (t - s) * 0.5 * (d + d2)
    return x


def sample_stochastic(
    u: FlowFn,
    x: Tensor,
    grid: Tensor,
    y: Tensor | None = None,
    gamma: float = 1.0,
    generator: torch.Generator | None = None,
    interpolant=Linear(),
    noise: Callable[[int], Tensor] | None = None,
) -> Tensor:
    """Stochastic multistep (consistency-style, Song et al. 2023 Alg. 1 generalised by gamma).

    Jump to data with X_{t_k, 0}, then re-noise to t_{k+1} with eps = sqrt(1 - gamma^2) * eps_old
    + gamma * fresh, where eps_old is the noise implied by x_k. gamma = 1 is the consistency
    sampler; gamma = 0 is deterministic. `noise(k)`: the fresh standard normals (x's shape) of step k
    (flowmap.generate draws them per sample, as the server does); default torch.randn(generator).
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    zero = _full(x, 0.0)
    for k, (s, t) in enumerate(zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True)):
        x0 = flow_step(u, x, _full(x, s), zero, y)
        if t == 0.0:
            return x0
        s_t, t_t = torch.tensor(s), torch.tensor(t)
        eps_old = (x - interpolant.alpha(s_t) * x0) / interpolant.sigma(s_t)
        if noise is None:
            fresh = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        else:
            fresh = noise(k).to(x.device, x.dtype)
        eps = (1 - gamma**2) ** 0.5 * eps_old + gamma * fresh
        x = interpolant.alpha(t_t) * x0 + interpolant.sigma(t_t) * eps
    return x


def guided(u: FlowFn, scale: float, null_label: int) -> FlowFn:
    """Classifier-free guidance at sampling time (flowmap.guidance.cfg_mix), both halves in one call."""
    if scale == 1.0:
        return u

    def u_cfg(x: Tensor, s: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        if y is None:
            return u(x, s, t, None)
        both = u(
            torch.cat([x, x]),
            torch.cat([s, s]),
            torch.cat([t, t]),
            torch.cat([y, torch.full_like(y, null_label)]),
        )
        cond, uncond = both.chunk(2)
        return cfg_mix(cond, uncond, scale)

    return u_cfg


SAMPLERS = {"flowmap": sample_flowmap, "euler": sample_euler, "heun": sample_heun}
