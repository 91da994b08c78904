"""Adapters: a user's module + UserSpec -> the net every flowmap part calls, u(x, s, t, y) with
X_{s,t}(x) = x + (t - s) u in our time (t = 1 noise, t = 0 data; DESIGN.md), along the linear path.

Time conventions map our (x, t) to the module's: `ours` as is; `reversed` tau = 1 - t; `sigma` (EDM's
x_sigma = x0 + sigma eps) sigma = t / (1 - t) capped at sigma_max and x_sigma = x * sigma / t, which is
x_t / (1 - t) below the cap (the linear and EDM paths are the same up to this scaling) and sigma_max * x
at t = 1 (EDM starts from sigma_max * eps).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowmap.interpolants import expand
from flowmap.user.spec import UserSpec

DIAGONAL_H = 1e-3  # flow maps: u(x, s, s) by the jump to s -/+ h (X_{s,s} = id gives no velocity)


class Time:
    """Our time -> the module's (tau), our state -> its state and back, its velocity -> ours."""

    def __init__(self, kind: str, sigma_max: float = 80.0):
        self.kind, self.sigma_max = kind, float(sigma_max)

    def tau(self, t: Tensor) -> Tensor:
        if self.kind == "reversed":
            return 1.0 - t
        return self.sigma(t) if self.kind == "sigma" else t

    def sigma(self, t: Tensor) -> Tensor:
        return (t / (1.0 - t)).nan_to_num(posinf=self.sigma_max).clamp(0.0, self.sigma_max)

    def scale(self, t: Tensor, x: Tensor) -> Tensor:
        """x_module = scale * x_ours: sigma / t (1 at t = 0) for sigma time, else 1."""
        if self.kind != "sigma":
            return torch.ones((), dtype=x.dtype, device=x.device)
        c = torch.where(t > 0, self.sigma(t) / t.clamp_min(1e-12), torch.ones_like(t))
        return expand(c, x).to(x.dtype)

    def velocity(self, v: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """d x_ours / dt from the module's d x_module / d tau at our (x, t)."""
        if self.kind == "reversed":
            return -v
        if self.kind == "sigma":  # x_t = x_sigma / (1 + sigma), t = sigma / (1 + sigma)
            return expand(1.0 + self.sigma(t), x).to(x.dtype) * v - self.scale(t, x) * x
        return v


class UserNet(nn.Module):
    """u(x, s, t, y) of a user's module under its spec (flowmap.nets' call convention)."""

    def __init__(self, module: nn.Module | object, spec: UserSpec):
        super().__init__()
        self.module, self.spec = module, spec
        self.time = Time(spec.time, spec.sigma_max)
        self.num_classes, self.shape = spec.num_classes, list(spec.shape)

    def raw(self, x: Tensor, s: Tensor, t: Tensor | None, y: Tensor) -> Tensor:
        """The module's own output for our (x, s[, t]), its inputs in its own convention."""
        xm = x * self.time.scale(s, x) if self.spec.time == "sigma" else x
        tm = self.time.tau(s).float()
        if t is None:
            return self.module(xm, tm, y)
        return self.module(xm, tm, self.time.tau(t).float(), y)

    def forward(self, x: Tensor, s, t, y: Tensor | None = None) -> Tensor:
        s, t = _times(x, s), _times(x, t)
        if y is None:  # the null label (unconditional models: 0)
            y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        kind = self.spec.parameterisation
        if kind == "average_velocity" and self.spec.time != "sigma":
            u = self.raw(x, s, t, y)
            return -u if self.spec.time == "reversed" else u
        if kind in ("average_velocity", "flow_map"):
            return self._from_jump(x, s, t, y)
        if kind == "consistency":
            return self._consistency(x, s, y)
        return self._velocity(x, s, t, y)

    def _jump(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """X_{s,t}(x) in our state space."""
        out = self.raw(x, s, t, y)
        if self.spec.parameterisation == "average_velocity":  # sigma time: x_sigma + (sigma_t - sigma_s) u
            out = x * self.time.scale(s, x) + expand(self.time.tau(t) - self.time.tau(s), x).to(x.dtype) * out
        return out / self.time.scale(t, x)

    def _from_jump(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """u = (X_{s,t}(x) - x) / (t - s); on the diagonal, the jump to s - h (s + h near 0)."""
        diag = (s - t).abs() < 1e-6
        t = torch.where(diag, torch.where(s >= DIAGONAL_H, s - DIAGONAL_H, s + DIAGONAL_H), t)
        return (self._jump(x, s, t, y) - x) / expand(t - s, x).to(x.dtype)

    def _consistency(self, x: Tensor, s: Tensor, y: Tensor) -> Tensor:
        """x0 = f(x, s); u = eps - x0 with eps = (x - (1 - s) x0) / s the noise x implies, so that
        X_{s,0} = x0 (the re-noising sampler's jump) and X_{s,t} = (1 - t) x0 + t eps (DDIM-like)."""
        x0 = self.raw(x, s, None, y)
        sx = expand(s, x).to(x.dtype)
        eps = (x - (1 - sx) * x0) / sx.clamp_min(1e-12)
        return torch.where(sx > 0, eps - x0, torch.zeros_like(x))

    def _v(self, x: Tensor, s: Tensor, y: Tensor) -> Tensor:
        return self.time.velocity(self.raw(x, s, None, y), x, s)

    def _velocity(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """Euler: u = v(x, s). Heun (EDM Alg. 1): u = (v(x, s) + v(x + (t - s) v, t)) / 2; Euler at t = 0."""
        v = self._v(x, s, y)
        if self.spec.solver == "euler":
            return v
        v2 = self._v(x + expand(t - s, x).to(x.dtype) * v, t, y)
        return torch.where(expand(t > 0, x), 0.5 * (v + v2), v)


def _times(x: Tensor, t) -> Tensor:
    return torch.as_tensor(t, dtype=torch.float32, device=x.device).expand(x.shape[0])
