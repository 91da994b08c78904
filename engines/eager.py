"""Eager PyTorch engine: the network in inference mode (the reference every engine is checked against)."""

from __future__ import annotations

import torch
from torch import Tensor

from engines.base import DEFAULT_BUCKETS, example_inputs
from flowmap.checkpoint import Model


class EagerEngine:
    name = "eager"

    def __init__(self, model: Model, device: str = "cpu", buckets=DEFAULT_BUCKETS, dtype=torch.float32):
        self.model, self.device, self.dtype = model, torch.device(device), dtype
        self.buckets = tuple(sorted(buckets))
        self.net = model.net.to(self.device, dtype).eval()

    @torch.inference_mode()
    def __call__(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return self.net(x, s, t, y)

    def warmup(self) -> None:
        for b in self.buckets:
            self(*example_inputs(self.model, b, self.device))
