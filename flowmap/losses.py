"""Losses: one small callable class per method. `loss(net, x0, y) -> per-sample loss [B]`.

Conventions (DESIGN.md): x_s = alpha_s x0 + sigma_s eps, t = 1 noise, t = 0 data;
X_{s,t}(x) = x + (t - s) u(x, s, t, y). The training loop reduces and steps the optimiser.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from flowmap.interpolants import Linear, expand, interpolate
from flowmap.timesamplers import TimeSampler


def sqnorm(d: Tensor) -> Tensor:
    """Per-sample mean squared value of d: [B, ...] -> [B]."""
    return d.reshape(d.shape[0], -1).pow(2).mean(1)


def adaptive(err: Tensor, p: float, c: float = 1e-3) -> Tensor:
    """Adaptive loss weighting sg(1 / (err + c)^p) * err (MeanFlow Sec. 4.3)."""
    return err / (err.detach() + c) ** p if p > 0 else err


def drop_labels(y: Tensor | None, p: float, null: int) -> Tensor | None:
    """Replace a fraction p of labels by the null label (classifier-free guidance training)."""
    if y is None or p <= 0:
        return y
    return torch.where(torch.rand(y.shape, device=y.device) < p, torch.full_like(y, null), y)


@dataclass
class FlowMatching:
    """fm: conditional flow matching on the diagonal, ||u(x_t, t, t) - v_t||^2 (Lipman et al. 2023)."""

    interpolant: object = field(default_factory=Linear)
    time: TimeSampler = field(default_factory=lambda: TimeSampler(diagonal=1.0))
    label_dropout: float = 0.1

    def __call__(self, net, x0: Tensor, y: Tensor | None = None) -> Tensor:
        s, _ = self.time(x0.shape[0], x0.device)
        x_s, v = interpolate(self.interpolant, x0, torch.randn_like(x0), s)
        y = drop_labels(y, self.label_dropout, getattr(net, "num_classes", 0))
        return sqnorm(net(x_s, s, s, y) - v)


@dataclass
class Eulerian:
    """esd (MeanFlow, Geng et al. 2025, Eq. 10 in our orientation):
    u_tgt = v - (s - t) * d/ds u(x_s, s, t), the total derivative along dx/ds = v by a JVP.

    With `guidance` w > 1 the guided target of MeanFlow Eq. 13 is learnt (v~ = w v + (1 - w) u_null),
    so guided samples cost one call per step.
    """

    interpolant: object = field(default_factory=Linear)
    time: TimeSampler = field(default_factory=TimeSampler)
    adaptive_p: float = 1.0
    label_dropout: float = 0.1
    guidance: float = 1.0

    def velocity(self, net, x_s: Tensor, s: Tensor, v: Tensor, y: Tensor | None) -> Tensor:
        null = getattr(net, "num_classes", 0)
        if self.guidance == 1.0 or y is None or null == 0:
            return v
        with torch.no_grad():
            u_null = net(x_s, s, s, torch.full_like(y, null))
        keep = expand((y != null).to(v.dtype), v)
        return keep * (self.guidance * v + (1 - self.guidance) * u_null) + (1 - keep) * v

    def __call__(self, net, x0: Tensor, y: Tensor | None = None) -> Tensor:
        s, t = self.time(x0.shape[0], x0.device)
        x_s, v = interpolate(self.interpolant, x0, torch.randn_like(x0), s)
        y = drop_labels(y, self.label_dropout, getattr(net, "num_classes", 0))
        v = self.velocity(net, x_s, s, v, y)
        u, du_ds = torch.func.jvp(lambda x, a, b: net(x, a, b, y), (x_s, s, t),
                                  (v, torch.ones_like(s), torch.zeros_like(t)))
        target = (v - expand(s - t, v) * du_ds).detach()
        return adaptive(sqnorm(u - target), self.adaptive_p)


@dataclass
class Lagrangian:
    """lsd (Boffi, Albergo & Vanden-Eijnden 2025): diagonal flow matching plus
    ||d/dt X_{s,t}(x_s) - sg(u(X_{s,t}(x_s), t, t))||^2, the t-derivative by a forward-mode JVP."""

    interpolant: object = field(default_factory=Linear)
    time: TimeSampler = field(default_factory=lambda: TimeSampler(diagonal=0.25))
    adaptive_p: float = 0.0
    label_dropout: float = 0.1

    def __call__(self, net, x0: Tensor, y: Tensor | None = None) -> Tensor:
        n = x0.shape[0]
        s, t = self.time(n, x0.device)
        x_s, v = interpolate(self.interpolant, x0, torch.randn_like(x0), s)
        y = drop_labels(y, self.label_dropout, getattr(net, "num_classes", 0))
        diag = sqnorm(net(x_s, s, s, y) - v)

        def flow(b: Tensor) -> Tensor:
            return x_s + expand(b - s, x_s) * net(x_s, s, b, y)

        x_t, dx_dt = torch.func.jvp(flow, (t,), (torch.ones_like(t),))
        with torch.no_grad():
            target = net(x_t, t, t, y)
        return diag + adaptive(sqnorm(dx_dt - target), self.adaptive_p)


LOSSES = {"fm": FlowMatching, "esd": Eulerian, "lsd": Lagrangian}


def make_loss(method: str, **kwargs):
    """Build the loss for `--method`; kwargs are the class's hyperparameters."""
    if method not in LOSSES:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[method](**kwargs)
