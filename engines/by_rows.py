"""Two engines for one model, each call sent to the one that is faster at its batch size.

On a CPU with bf16 matrix units the mnist U-Net runs ~1.2-1.5x the rows per second in bf16 from 8 rows
up, and half as fast at one row (docs/engines.md). Neither engine alone is best at every load: an idle
server runs 1-row steps, a loaded one full batches. `ByRows` holds the float32 engine and the bf16 one,
times both at every batch bucket once (`choose`, at warm-up), and then routes each call by the bucket its
row count falls in. The float32 engine keeps a bucket unless the other is faster by a clear margin, so
the choice errs towards exact float32 and timing noise cannot flip it.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from engines.base import PRECISION_NAMES, Engine, bucket_for, example_inputs, sync

MARGIN = 0.9  # another engine takes a bucket only below MARGIN x the first engine's time


def pick_by_bucket(costs: dict[str, dict[int, float]], margin: float = MARGIN) -> dict[int, str]:
    """bucket -> engine name: the first engine of `costs` (name -> seconds by bucket) unless another's
    time at that bucket is below `margin` times the first's (then the fastest)."""
    first, *others = costs
    choice = {}
    for b, base in costs[first].items():
        best = min(others, key=lambda n: costs[n][b], default=None)
        choice[b] = best if best is not None and costs[best][b] < margin * base else first
    return choice


def time_call(engine: Engine, inputs: tuple, reps: int = 3, long: float = 0.25) -> float:
    """Best seconds of `reps` calls (one call once a call takes over `long` seconds)."""
    best = float("inf")
    for _ in range(reps):
        sync(engine.device)
        t0 = time.perf_counter()
        engine(*inputs)
        sync(engine.device)
        best = min(best, time.perf_counter() - t0)
        if best > long:
            break
    return best


class ByRows:
    """Engines by name (the first is the reference, float32) routed per call by batch bucket."""

    def __init__(self, engines: dict[str, Engine], buckets: tuple[int, ...]):
        if len(engines) < 1:
            raise ValueError("ByRows needs at least one engine")
        self.engines, self.buckets = dict(engines), tuple(sorted(buckets))
        first = next(iter(self.engines.values()))
        self.device, self.dtype = first.device, first.dtype  # the reference's
        self.name = "+".join(self.engines)
        self.choice = {b: next(iter(self.engines)) for b in self.buckets}
        self.costs: dict[str, dict[int, float]] = {}

    def __call__(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return self.engines[self.choice[bucket_for(x.shape[0], self.buckets)]](x, s, t, y)

    def warmup(self) -> None:
        for engine in self.engines.values():
            warm = getattr(engine, "warmup", None)
            if warm is not None:
                warm()

    def release_memory(self) -> None:
        for engine in self.engines.values():
            release = getattr(engine, "release_memory", None)
            if release is not None:
                release()

    def choose(self, model, reps: int = 3) -> dict[int, str]:
        """Time every engine at every bucket (interleaved, best of `reps`) and route by the result."""
        self.costs = {name: {} for name in self.engines}
        for b in self.buckets:
            inputs = example_inputs(model, b, self.device)
            with torch.inference_mode():
                for name, engine in self.engines.items():
                    self.costs[name][b] = time_call(engine, inputs, reps)
        self.choice = pick_by_bucket(self.costs)
        return self.choice

    def precision(self) -> str:
        """What GET /v1/models shows: "auto: fp32 below 8 rows, bf16 from 8" (or one precision)."""
        names = {n: PRECISION_NAMES.get(e.dtype, str(e.dtype)) for n, e in self.engines.items()}
        runs: list[tuple[str, int]] = []  # (precision, first bucket) of each run of equal choices
        for b in self.buckets:
            p = names[self.choice[b]]
            if not runs or runs[-1][0] != p:
                runs.append((p, b))
        if len(runs) == 1:
            return f"auto: {runs[0][0]}"
        parts = [f"{runs[0][0]} below {runs[1][1]} rows"] + [f"{p} from {b} rows" for p, b in runs[1:]]
        return "auto: " + ", ".join(parts)
