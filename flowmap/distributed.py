"""Data-parallel training: `torchrun --nproc-per-node N -m flowmap train ...` (gloo on CPU, nccl on GPU).

Why no DistributedDataParallel wrapper: the flow-map losses call the network several times per
step (diagonal + off-diagonal terms, EMA/teacher targets) and differentiate it forward-mode with
`torch.func.jvp`. DDP's reducer expects one forward per backward and registers autograd hooks that
functorch transforms do not go through, so a JVP through a DDP-wrapped module either fails or
silently breaks the gradient sync (the JVP tangents are not reduced, and a second forward before
backward confuses the bucket readiness bookkeeping). We therefore run every loss on the plain
module and synchronise exactly what DDP would have: after `backward`, the gradients are averaged
over ranks with one flat all-reduce, before clipping and the optimiser step. The result is the
gradient of the mean loss over the global batch, identical to single-process training on that
batch (tests/unit/flowmap/test_ddp.py checks this).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: rank, world size, and whether we initialised the group."""

    rank: int = 0
    world: int = 1
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup() -> DistContext:
    """Join the process group torchrun describes (WORLD_SIZE > 1); else a single-process no-op."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), owns_group=False)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), owns_group=True)


def teardown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def local_batch(batch_size: int, ctx: DistContext) -> int:
    """Per-rank batch for a global `batch_size`; it must split evenly."""
    if batch_size % ctx.world:
        raise ValueError(f"batch_size {batch_size} does not split over {ctx.world} processes")
    return batch_size // ctx.world


def broadcast_params(module: torch.nn.Module, ctx: DistContext) -> None:
    """Make every rank start from rank 0's weights (and buffers)."""
    if ctx.enabled:
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def average_gradients(module: torch.nn.Module, ctx: DistContext) -> None:
    """grad <- mean over ranks of grad, one flat all-reduce (what DDP does, without its hooks)."""
    if not ctx.enabled:
        return
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= ctx.world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def mean_scalar(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean of a scalar over ranks (so every rank sees the same loss and stops on the same step)."""
    if not ctx.enabled:
        return value
    v = value.detach().reshape(1).clone()
    dist.all_reduce(v)
    return v[0] / ctx.world


def rank_seed(seed: int, ctx: DistContext, step: int = 0) -> int:
    """A distinct RNG seed per rank (and per resume step) for data indices, noise and times."""
    return seed + 1_000_003 * ctx.rank + 7_919 * step
