"""The engine protocol and a registry with lazy imports (CPU-only machines never import TensorRT).

An engine is a callable u = engine(x, s, t, y) with x: [B, *shape] float, s, t: [B] float,
y: [B] long (ignored by unconditional models; the null label C selects the unconditional branch).
Compiled engines run fixed batch buckets: a batch is padded up to the smallest bucket >= B (batches
above the largest bucket are split) and the output sliced back (`run_bucketed`, shared by all).
Every engine but eager is checked against eager when loaded (`check_parity`) and refused on failure.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from flowmap.checkpoint import Model
from flowmap.errors import UserError

DEFAULT_BUCKETS = (1, 8, 32, 128)

# name -> "module:Class"; imported only when chosen
ENGINES = {
    "eager": "engines.eager:EagerEngine",
    "torchscript": "engines.torchscript:TorchScriptEngine",
    "compile": "engines.compiled:CompileEngine",
    "onnxruntime": "engines.ort:OnnxRuntimeEngine",
    "tensorrt": "engines.trt:TensorRTEngine",
}

# an engine at another compute precision, by name: (engine, dtype); `--engine eager-bf16` anywhere
VARIANTS = {"eager-bf16": ("eager", torch.bfloat16)}
PRECISION_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

# relative error (max |u - u_eager| / max |u_eager|) an engine may have, by its compute precision
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}

# CPU engines fastest first, from `flowmap bench` on the digits model (docs/engines.md); the
# first whose runtime is installed is the default. GPU: CUDA graphs via torch.compile.
CPU_PREFERENCE = ("onnxruntime", "torchscript", "eager")
CUDA_PREFERENCE = ("compile", "eager")
# engine -> Python package it needs (checked with find_spec, never imported here)
REQUIRES = {"onnxruntime": "onnxruntime", "tensorrt": "tensorrt", "compile": None}
REQUIRES_CUDA = {**REQUIRES, "compile": "triton"}  # Inductor generates Triton kernels on CUDA


class EngineError(UserError, RuntimeError):
    """An engine that cannot be built or fails its parity check; the message says why."""


@runtime_checkable
class Engine(Protocol):
    name: str
    device: torch.device
    dtype: torch.dtype
    buckets: tuple[int, ...]

    def __call__(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor) -> Tensor: ...

    def warmup(self) -> None: ...


def engine_class(name: str) -> type:
    """The class registered as `name` (or named by an import path `module:Class`), imported now."""
    path = ENGINES.get(name) or (name if name.count(":") == 1 else None)  # or a user's "module:Class"
    if path is None:
        raise EngineError(f"unknown engine {name!r}; choose one of {sorted(ENGINES)} or give module:Class")
    module, cls = path.split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise EngineError(f"engine {name!r} cannot be imported: {e}") from None


def available(name: str, device: str | torch.device = "cpu") -> bool:
    """Whether the runtime engine `name` needs on `device` is installed (without importing it)."""
    cuda = torch.device(device).type == "cuda"
    package = (REQUIRES_CUDA if cuda else REQUIRES).get(name)
    return name in ENGINES and (package is None or importlib.util.find_spec(package) is not None)


def default_engine(device: str | torch.device = "cpu") -> str:
    """The fastest installed engine for `device` (CPU ranking measured by `flowmap bench`)."""
    preference = CUDA_PREFERENCE if torch.device(device).type == "cuda" else CPU_PREFERENCE
    return next(name for name in preference if available(name, device))


def cache_root() -> Path:
    """Where engines keep compiled artifacts between runs: $FLOWMAP_CACHE_DIR or ~/.cache/flowmap."""
    return Path(os.environ.get("FLOWMAP_CACHE_DIR", Path.home() / ".cache" / "flowmap"))


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op off CUDA): time the work, not the kernel launches."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def example_inputs(model: Model, batch: int, device="cpu", seed: int = 0) -> tuple[Tensor, ...]:
    """Random (x, s, t, y) for warm-up, tracing and parity checks; s >= t."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *model.shape, generator=g)
    a, b = torch.rand(batch, generator=g), torch.rand(batch, generator=g)
    y = torch.randint(0, max(1, model.num_classes) + 1, (batch,), generator=g)
    return tuple(v.to(device) for v in (x, torch.maximum(a, b), torch.minimum(a, b), y))


# ---- batch buckets ---------------------------------------------------------------------------


def bucket_for(batch: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket >= batch (the largest bucket when none is)."""
    return next((b for b in sorted(buckets) if b >= batch), max(buckets))


def _pad(v: Tensor, n: int) -> Tensor:
    """v: [B, ...] -> [n, ...] with zero rows appended (padding rows are valid inputs: s=t=0, y=0)."""
    return v if v.shape[0] == n else torch.cat([v, v.new_zeros((n - v.shape[0], *v.shape[1:]))])


def run_bucketed(
    fn: Callable[..., Tensor], buckets: tuple[int, ...], x: Tensor, s: Tensor, t: Tensor, y: Tensor
) -> Tensor:
    """Run fn, which accepts only bucket-sized batches, on any batch: pad, split and slice."""
    if x.shape[0] in buckets:  # a bucket's size already (the common case at one row or a full batch)
        return fn(x, s, t, y)
    top = max(buckets)
    outs = []
    for i in range(0, x.shape[0], top):
        chunk = [v[i : i + top] for v in (x, s, t, y)]
        n, size = chunk[0].shape[0], bucket_for(chunk[0].shape[0], buckets)
        outs.append(fn(*(_pad(v, size) for v in chunk))[:n])
    return outs[0] if len(outs) == 1 else torch.cat(outs)


class BaseEngine:
    """What every engine shares: it is built for a model, a device, a compute dtype and batch buckets (what
    `load_engine` passes), then `setup(**options)` builds the engine itself from its own options; warm-up
    runs one call at every bucket (compilation, CUDA graphs, the allocator)."""

    name = "base"
    default_device = "cpu"
    float32_only = False  # engines that compute in float32 only refuse other dtypes

    def __init__(self, model: Model, device=None, buckets=DEFAULT_BUCKETS, dtype=torch.float32, **options):
        if self.float32_only and dtype != torch.float32:
            raise EngineError(f"{self.name} engine runs float32 only, not {dtype}")
        self.model, self.device, self.dtype = model, torch.device(device or self.default_device), dtype
        self.buckets = tuple(sorted(buckets))
        self.setup(**options)

    def setup(self) -> None:
        """The engine's own construction, from its options (none here)."""

    def __call__(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def warmup(self) -> None:
        for b in self.buckets:
            self(*example_inputs(self.model, b, self.device))

    def release_memory(self) -> None:
        """Give back memory the engine keeps for batches larger than it now serves (the server calls it
        once, after its warm-up ran every bucket): a no-op unless the runtime keeps a cache of its own."""


class Bucketed(BaseEngine):
    """Base for compiled engines: subclasses implement `forward` for bucket-sized batches only."""

    name = "bucketed"

    def forward(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor) -> Tensor:
        s = torch.as_tensor(s, dtype=torch.float32, device=x.device).expand(x.shape[0])
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device).expand(x.shape[0])
        y = y if y is not None else torch.full_like(s, self.model.num_classes, dtype=torch.long)
        return run_bucketed(self.forward, self.buckets, x, s, t, y)


# ---- parity ----------------------------------------------------------------------------------


def relative_error(u: Tensor, ref: Tensor) -> float:
    """max |u - ref| / max |ref| (in float64)."""
    u, ref = u.detach().double().cpu(), ref.detach().double().cpu()
    if u.shape != ref.shape:
        return float("inf")
    return float((u - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def _run(engine: Engine, model: Model, inputs: tuple, batch: int) -> Tensor:
    """The engine's output, or EngineError naming the model when the call itself fails (a trace that
    captured a batch-size-dependent program, say)."""
    try:
        return engine(*inputs)
    except RuntimeError as e:
        first = (str(e).strip().splitlines() or [""])[-1]
        raise EngineError(
            f"model {model.name!r}: engine {engine.name!r} fails at batch {batch} where eager runs "
            f"({type(e).__name__}: {first}); refusing to serve"
        ) from None


def parity_seed(model: Model) -> int:
    """The seed of a model's parity inputs: fixed by its name, shape and class count, so one model gets one
    verdict at every start (a random draw could refuse a model near the tolerance at one start and serve
    it at the next: a pod crash-looping by chance)."""
    shape = ",".join(str(int(d)) for d in model.shape)
    return zlib.crc32(f"{model.name}:{shape}:{model.num_classes}".encode()) & 0x7FFFFFFF


def check_parity(engine: Engine, model: Model, seed: int | None = None) -> float:
    """Compare engine with eager on random inputs (seed: `parity_seed` unless given) at every bucket;
    EngineError if too far."""
    seed = parity_seed(model) if seed is None else seed
    tol = TOLERANCE.get(engine.dtype, 1e-4)
    net = model.net.to(engine.device).eval()
    worst = 0.0
    for i, b in enumerate(engine.buckets):
        inputs = example_inputs(model, b, engine.device, seed=seed + i)
        with torch.inference_mode():
            ref = net(*inputs)
        err = relative_error(_run(engine, model, inputs, b), ref)
        if not err <= tol:  # also catches NaN
            raise EngineError(
                f"model {model.name!r}: engine {engine.name!r} fails parity with eager at batch {b}: "
                f"relative error {err:.3g} > {tol:g} ({engine.dtype}, parity seed {seed}); refusing to serve"
            )
        worst = max(worst, err)
    return worst
