"""A loaded model: the network u(x, s, t, y), its config and where it came from (checkpoint or user's)."""

from __future__ import annotations

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
