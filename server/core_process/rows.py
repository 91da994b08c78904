"""The rows in flight: their contiguous state arrays, and dropping the rows of jobs that ended early.

x is a torch tensor on the engine's device; step k, steps K, label y, guidance w and job id are small
numpy vectors (a numpy op on a few rows costs ~1 us, a torch op ~3-5 us), so admitting, stepping and
retiring are a fixed number of array operations whatever the row count; Python work is per job, never per
sample. A job that ends early (cancelled, expired, failed) leaves its rows in place, its id in `dead`;
the next compaction drops them and counts them in `dropped` (metrics read it through take_dropped).
`Rows` is the scheduler's base class: the queue and policy live in `server.core_process.scheduler`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from flowmap.samplers import uniform_grid
from server.core_process.jobs import Job


def grid_table(max_steps: int) -> np.ndarray:
    """G[K, k] = uniform_grid(K)[k], as `flowmap sample` uses it; float32 [max_steps + 1, max_steps + 2]."""
    g = np.zeros((max_steps + 1, max_steps + 2), np.float32)
    for k in range(1, max_steps + 1):
        g[k, : k + 1] = uniform_grid(k).numpy()
    return g


class Rows:
    """The state of the rows in flight (one row per sample; a guided sample counts twice in `rows`)."""

    def __init__(self) -> None:
        self.dead: set[int] = set()  # ids of jobs ended early whose rows are still in the state
        self.dropped = 0  # rows of jobs ended early dropped from the state, since the last take_dropped
        self._clear()

    def _clear(self) -> None:
        """The state of the rows in flight: x [R, *shape]; k, K, y, job, key [R] int64; w [R] float32."""
        self.x: Tensor | None = None
        self.k = self.K = self.y = self.job = self.key = self.pk = self.pv = np.zeros(0, np.int64)
        self.w = np.zeros(0, np.float32)
        self.pot = np.zeros(0, np.float64)  # steered rows: the potential at the last resampling
        self.cut = np.zeros(0, bool)  # rows early exit finishes in this iteration (jump to t = 0)
        self.rows = 0

    def in_flight(self) -> int:
        """Samples (state rows) in flight."""
        return len(self.k)

    def take_dropped(self) -> int:
        """Rows of jobs ended early (cancelled, expired, failed) dropped since the last call."""
        n, self.dropped = self.dropped, 0
        return n

    def _append(self, takes: list[tuple[Job, int, int]]) -> None:
        """Add the rows of `takes` [(job, first sample, count)]: one tensor op per state field."""
        steps, ids, weights, labels, keys, pk, pv = [], [], [], [], [], [], []
        for j, a, n in takes:
            pk += [j.group if j.steer is not None else 0] * n
            pv += [j.on_preview is not None] * n
            steps += [j.steps] * n
            ids += [j.id] * n
            weights += [j.guidance] * n
            labels += j.labels[a : a + n]
            keys += j.keys[a : a + n] if j.keys is not None else [0] * n
        xs = [j.noise if n == j.n else j.noise[a : a + n] for j, a, n in takes]
        kjy = np.array([steps, ids, labels, keys], np.int64)  # [4, new rows]
        self.x = torch.cat(xs if self.x is None else [self.x, *xs])
        self.k = np.concatenate([self.k, np.zeros(len(steps), np.int64)])
        self.K = np.concatenate([self.K, kjy[0]])
        self.job = np.concatenate([self.job, kjy[1]])
        self.y = np.concatenate([self.y, kjy[2]])
        self.w = np.concatenate([self.w, np.array(weights, np.float32)])
        self.key = np.concatenate([self.key, kjy[3]])
        self.pk = np.concatenate([self.pk, np.array(pk, np.int64)])
        self.pot = np.concatenate([self.pot, np.zeros(len(pk), np.float64)])
        self.cut = np.concatenate([self.cut, np.zeros(len(pk), bool)])
        self.pv = np.concatenate([self.pv, np.array(pv, np.int64)])
        self.rows += sum(n * j.rows_per_sample for j, _, n in takes)

    def _alive(self) -> np.ndarray:
        """[R] bool: rows whose job has not ended early."""
        if not self.dead:
            return np.ones(self.in_flight(), bool)
        return ~np.isin(self.job, np.array(sorted(self.dead), np.int64))

    def _compact(self, keep: np.ndarray) -> None:
        """Keep the rows where `keep` is True and whose job is alive."""
        if self.dead:
            alive = self._alive()
            self.dropped += int(np.count_nonzero(~alive))
            keep = keep & alive
            self.dead.clear()
        if keep.all():
            return
        idx = np.flatnonzero(keep)
        if not len(idx):
            return self._clear()
        self.x = self.x[row_index(idx, self.x)]
        state = (self.k, self.K, self.y, self.w, self.job, self.key, self.pk, self.pot, self.pv, self.cut)
        self.k, self.K, self.y, self.w, self.job, self.key, self.pk, self.pot, self.pv, self.cut = (
            a[idx] for a in state
        )
        self.rows = len(idx) + int(np.count_nonzero(self.w != 1.0))  # rows_per_sample, summed


def runs(*keys: np.ndarray) -> tuple[list[int], list[int]]:
    """(starts, lengths) of the runs of consecutive rows equal in every one of `keys` (same length, >= 1)
    rows: the rows of one job, or of one job at one step, are contiguous."""
    change = keys[0][1:] != keys[0][:-1]
    for k in keys[1:]:
        change |= k[1:] != k[:-1]
    starts = [0, *(np.flatnonzero(change) + 1).tolist()]
    ends = [*starts[1:], len(keys[0])]
    return starts, [b - a for a, b in zip(starts, ends, strict=True)]


def row_index(idx: np.ndarray, x: Tensor) -> Tensor:
    """Row indices for x (on x's device)."""
    i = torch.from_numpy(idx)
    return i if x.device.type == "cpu" else i.to(x.device, non_blocking=True)
