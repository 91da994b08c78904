"""The front door: an engine by name, or an exported artifact by path, checked before it is returned."""

from __future__ import annotations

from pathlib import Path

import torch

from engines.artifacts import load_artifact
from engines.base import DEFAULT_BUCKETS, VARIANTS, Engine, EngineError, check_parity, engine_class
from flowmap.checkpoint import Model

ARTIFACT_SUFFIXES = (".pt", ".onnx", ".plan")


def load_engine(
    name: str,
    model: Model | None = None,
    device: str = "cpu",
    buckets: tuple[int, ...] = DEFAULT_BUCKETS,
    parity: bool = True,
    **options,
) -> Engine:
    """Build the engine `name` for `model` on `device`, checked against eager before it is returned.

    `name` may also be the path of an exported artifact (.pt, .onnx, .plan); see engines.artifacts, or a
    precision variant ("eager-bf16": engines.base.VARIANTS).
    """
    if Path(str(name)).suffix in ARTIFACT_SUFFIXES:
        return load_artifact(name, model=model, device=device, buckets=buckets, **options)
    if model is None:
        raise EngineError(f"engine {name!r} needs a model")
    if name in VARIANTS:
        name, options["dtype"] = VARIANTS[name]
    engine = engine_class(name)(model, device=device, buckets=buckets, **options)
    if parity and (name != "eager" or engine.dtype != torch.float32):  # eager in float32 is the reference
        check_parity(engine, model)
    return engine
