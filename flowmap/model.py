"""A loaded model: the network u(x, s, t, y), its config and where it came from (checkpoint or user's)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Model:
    """A loaded flow map: the network u(x, s, t, y), its config and where it came from."""

    net: torch.nn.Module
    config: dict
    path: Path

    @property
    def shape(self) -> list[int]:
        return list(self.config["data"]["shape"])

    @property
    def num_classes(self) -> int:
        return int(self.config["data"].get("num_classes", 0))

    @property
    def name(self) -> str:
        return self.config.get("name") or self.path.stem


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


class Autocast(torch.nn.Module):
    """`net` under torch.autocast at `dtype`: convolutions and matrix products compute in it, the weights
    and everything else (the time embedding's Fourier phases included: a bf16 copy of the weights would
    round its 1000x-scaled frequencies by radians) stay float32; the output is float32."""

    def __init__(self, net: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.net, self.dtype = net, dtype

    def forward(self, x, s, t, y=None):
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.net(x, s, t, y).float()


def with_precision(model: Model, precision: str) -> Model:
    """The model with its network computing at `precision` (fp32: the model itself)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, not {precision!r}")
    if precision == "fp32":
        return model
    return dataclasses.replace(model, net=Autocast(model.net, PRECISIONS[precision]))
