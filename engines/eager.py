"""Eager PyTorch engine: the network in inference mode (the reference every engine is checked against).

A dtype other than float32 runs the network under `torch.autocast` (flowmap.model.Autocast), weights
kept in float32: bf16 on CPUs with AMX/AVX512-BF16, fp16 or bf16 on CUDA."""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from engines.base import BaseEngine
from flowmap.model import Autocast


def has_conv(net: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) for m in net.modules())


class EagerEngine(BaseEngine):
    """Runs any batch size as is; channels-last for conv nets on CUDA (where it helps) unless told."""

    name = "eager"

    def setup(self, channels_last: bool | None = None) -> None:
        model = self.model
        self.net = model.net.to(self.device).eval()
        if channels_last is None:
            channels_last = self.device.type == "cuda" and has_conv(self.net)
        self.channels_last = channels_last and len(model.shape) == 3
        if self.channels_last:  # on a copy: `.to` restrides the parameters in place, and the model's net is
            # shared with the other engines built on it (a compiled one's guards fail on the new strides)
            self.net = copy.deepcopy(self.net).to(memory_format=torch.channels_last)
        if self.dtype != torch.float32:
            self.net = Autocast(self.net, self.dtype)

    @torch.inference_mode()
    def __call__(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor) -> Tensor:
        x = x.float()
        if self.channels_last:  # x: [B, C, H, W] stored NHWC
            x = x.contiguous(memory_format=torch.channels_last)
        u = self.net(x, s, t, y)
        return u.float().contiguous() if self.channels_last else u.float()
