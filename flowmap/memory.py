"""Training memory: estimate a step's peak from a small probe, and pick micro-batches that fit.

A JVP method (esd, esdt, lsd) at a real image size can need tens of GB at its default batch; the
kernel's OOM killer then ends the run with no message. Instead the loop measures the bytes autograd
saves per sample on a probe batch, and splits each batch into micro-batches whose gradients are
accumulated (the mean over the batch is unchanged), or refuses with one line naming the numbers.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from flowmap.errors import UserError

PROBE = 4  # samples in the probe batch
HEADROOM = 2.5  # peak / saved-tensor bytes: transient activations, JVP tangents, allocator slack
BUDGET = 0.7  # share of the available memory a step may plan to use


class OutOfMemory(UserError, RuntimeError):
    """The step cannot fit the available memory even one sample at a time."""


def available_bytes() -> int:
    """Memory this process may still take: MemAvailable, capped by a cgroup v2 limit if one is set."""
    avail = _meminfo_available()
    limit = Path("/sys/fs/cgroup/memory.max")
    if limit.exists() and limit.read_text().strip() != "max":
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        avail = min(avail, int(limit.read_text()) - used)
    return max(avail, 0)


def _meminfo_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 1 << 62


def saved_bytes_per_sample(step, x: torch.Tensor, y: torch.Tensor | None) -> float:
    """Bytes autograd keeps for backward per sample: `step(x, y)` runs the loss on PROBE rows, the RNG
    state is restored afterwards so training draws exactly what it would have drawn without the probe."""
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.random.fork_rng(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step(x[:PROBE], None if y is None else y[:PROBE]).sum()
    return total / min(PROBE, len(x))


def plan_micro_batch(batch: int, per_sample: float, params_bytes: int, avail: int) -> int:
    """The largest micro-batch (batch itself if it fits) whose estimated peak fits the budget."""
    room = BUDGET * avail - 4 * params_bytes  # weights, gradients, two Adam moments
    fits = int(room // (HEADROOM * per_sample)) if per_sample > 0 else batch
    if fits < 1:
        need = (HEADROOM * per_sample + 4 * params_bytes) / 2**30
        raise OutOfMemory(
            f"batch {batch}: even one sample at a time needs about {need:.1f} GiB per step and "
            f"{avail / 2**30:.1f} GiB is available: use a smaller --width or --mults"
        )
    return min(batch, fits)


def describe(batch: int, micro: int, per_sample: float) -> str:
    est = HEADROOM * per_sample * batch / 2**30
    chunks = math.ceil(batch / micro)
    return (
        f"flowmap: a batch of {batch} needs about {est:.1f} GiB at once; training it as {chunks} "
        f"micro-batches of {micro} with gradient accumulation (same mean gradient)"
    )
