"""Interpolants x_t = alpha_t * x0 + sigma_t * eps (t = 1 noise, t = 0 data; DESIGN.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Linear:
    """alpha_t = 1 - t, sigma_t = t (rectified flow / flow matching)."""

    name: str = "linear"

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def d_alpha(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)


@dataclass(frozen=True)
class Trig:
    """alpha_t = cos(pi t / 2), sigma_t = sin(pi t / 2) (variance preserving)."""

    name: str = "trig"

    def alpha(self, t: Tensor) -> Tensor:
        return torch.cos(0.5 * math.pi * t)

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * t)

    def d_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * torch.cos(0.5 * math.pi * t)


INTERPOLANTS = {"linear": Linear(), "trig": Trig()}


def get_interpolant(name: str) -> Linear | Trig:
    if name not in INTERPOLANTS:
        raise ValueError(f"unknown interpolant {name!r}; choose one of {sorted(INTERPOLANTS)}")
    return INTERPOLANTS[name]


def expand(t: Tensor, x: Tensor) -> Tensor:
    """Broadcast per-sample times t: [B] against x: [B, ...]."""
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def interpolate(interp, x0: Tensor, eps: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Return (x_t, v_t): the point on the path and its conditional velocity d x_t / dt."""
    te = expand(t, x0)
    x_t = interp.alpha(te) * x0 + interp.sigma(te) * eps
    v_t = interp.d_alpha(te) * x0 + interp.d_sigma(te) * eps
    return x_t, v_t
