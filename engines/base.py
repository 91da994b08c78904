"""The engine protocol and a registry with lazy imports (CPU-only machines never import TensorRT).

An engine is a callable u = engine(x, s, t, y) with x: [B, *shape] float, s, t: [B] float,
y: [B] long (ignored by unconditional models; the null label C selects the unconditional branch).
"""

from __future__ import annotations

import importlib
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from flowmap.checkpoint import Model

DEFAULT_BUCKETS = (1, 8, 32, 128)

# name -> "module:Class"; imported only when chosen
ENGINES = {
    "eager": "engines.eager:EagerEngine",
}


class EngineError(RuntimeError):
    """An engine that cannot be built or fails its parity check; the message says why."""


@runtime_checkable
class Engine(Protocol):
    name: str
    device: torch.device
    dtype: torch.dtype
    buckets: tuple[int, ...]

    def __call__(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor) -> Tensor: ...

    def warmup(self) -> None: ...


def load_engine(name: str, model: Model, device: str = "cpu",
                buckets: tuple[int, ...] = DEFAULT_BUCKETS, **options) -> Engine:
    """Build the engine `name` for `model` on `device`."""
    if name not in ENGINES:
        raise EngineError(f"unknown engine {name!r}; choose one of {sorted(ENGINES)}")
    module, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls)(model, device=device, buckets=buckets, **options)


def example_inputs(model: Model, batch: int, device="cpu", seed: int = 0) -> tuple[Tensor, ...]:
    """Random (x, s, t, y) for warm-up, tracing and parity checks; s >= t."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *model.shape, generator=g)
    a, b = torch.rand(batch, generator=g), torch.rand(batch, generator=g)
    y = torch.randint(0, max(1, model.num_classes) + 1, (batch,), generator=g)
    return tuple(v.to(device) for v in (x, torch.maximum(a, b), torch.minimum(a, b), y))
