"""Time samplers for training pairs (s, t) with s >= t (s: start, nearer noise; t: end)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TimeSampler:
    """Draw two times from `dist`; s = max, t = min; a fraction `diagonal` of pairs has t = s.

    dist: "uniform" on [0, 1] or "logit_normal" (sigmoid of N(mean, std), MeanFlow Sec. 4.3); or
    "grid": the jumps the server takes, a segment (1 - i/n, 1 - (i+1)/n) of a uniform n-step schedule,
    n drawn from 1..`grid_max` (for distilling the served step counts; the diagonal fraction still holds).
    """

    dist: str = "logit_normal"
    mean: float = -0.4
    std: float = 1.0
    diagonal: float = 0.75
    grid_max: int = 4

    def __post_init__(self):
        if self.dist not in ("uniform", "logit_normal", "grid"):
            raise ValueError(f"unknown time distribution {self.dist!r}: use uniform, logit_normal or grid")
        if not 0.0 <= self.diagonal <= 1.0:
            raise ValueError(f"diagonal fraction must be in [0, 1], got {self.diagonal}")

    def draw(self, n: int, device=None) -> Tensor:
        if self.dist == "uniform":
            return torch.rand(n, device=device)
        return torch.sigmoid(self.mean + self.std * torch.randn(n, device=device))

    def segments(self, n: int, device=None) -> tuple[Tensor, Tensor]:
        steps = torch.randint(1, self.grid_max + 1, (n,), device=device).float()
        i = torch.floor(torch.rand(n, device=device) * steps)
        return 1.0 - i / steps, 1.0 - (i + 1) / steps

    def __call__(self, n: int, device=None) -> tuple[Tensor, Tensor]:
        if self.dist == "grid":
            s, t = self.segments(n, device)
        else:
            a, b = self.draw(n, device), self.draw(n, device)
            s, t = torch.maximum(a, b), torch.minimum(a, b)
        diag = torch.rand(n, device=device) < self.diagonal
        return s, torch.where(diag, s, t)
