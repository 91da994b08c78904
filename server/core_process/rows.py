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

# the empty state's arrays (shared: see Rows._clear)
_EMPTY_I, _EMPTY_F, _EMPTY_D = np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.float64)
_EMPTY_B = np.zeros(0, bool)


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
        self.cancelled_at: dict[int, float] = {}  # dead ids of cancelled jobs: when they were cancelled
        self.freed: list[float] = []  # seconds from a cancel to its rows' drop, since the last take_freed
        self._clear()

    def _clear(self) -> None:
        """The state of the rows in flight: x [R, *shape]; k, K, y, job, key, pk, pv [R] int64; w [R]
        float32; pot [R] float64 (steered rows: the potential at the last resampling); cut [R] bool (rows
        early exit finishes in this iteration: a jump to t = 0). Empty: shared empty arrays (an in-place
        write into an empty array changes nothing, so sharing them is safe)."""
        self.x: Tensor | None = None
        self.k = self.K = self.y = self.job = self.key = self.pk = self.pv = _EMPTY_I
        self.w, self.pot, self.cut = _EMPTY_F, _EMPTY_D, _EMPTY_B
        self.rows = 0

    def in_flight(self) -> int:
        """Samples (state rows) in flight."""
        return len(self.k)

    def take_dropped(self) -> int:
        """Rows of jobs ended early (cancelled, expired, failed) dropped since the last call."""
        n, self.dropped = self.dropped, 0
        return n

    def take_freed(self) -> list[float]:
        """Seconds from each cancel to its job's rows leaving the state, since the last call."""
        if not self.freed:
            return []
        out, self.freed = self.freed, []
        return out

    def _append(self, takes: list[tuple[Job, int, int]]) -> None:
        """Add the rows of `takes` [(job, first sample, count)]: one array op per state field (none to
        join when nothing is in flight: the new rows are the state)."""
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
        r = len(steps)
        kjy = np.array([steps, ids, labels, keys, pk, pv], np.int64)  # [6, new rows]
        new = {
            "k": np.zeros(r, np.int64),
            "K": kjy[0],
            "job": kjy[1],
            "y": kjy[2],
            "key": kjy[3],
            "pk": kjy[4],
            "pv": kjy[5],
            "w": np.array(weights, np.float32),
            "pot": np.zeros(r, np.float64),
            "cut": np.zeros(r, bool),
        }
        empty = self.x is None  # nothing in flight: the new rows are the state
        self.x = (xs[0] if len(xs) == 1 else torch.cat(xs)) if empty else torch.cat([self.x, *xs])
        for name, a in new.items():
            setattr(self, name, a if empty else np.concatenate([getattr(self, name), a]))
        self.rows += sum(n * j.rows_per_sample for j, _, n in takes)

    def _alive(self) -> np.ndarray:
        """[R] bool: rows whose job has not ended early."""
        if not self.dead:
            return np.ones(self.in_flight(), bool)
        return ~np.isin(self.job, np.array(sorted(self.dead), np.int64))

    def _compact(self, keep: np.ndarray, now: float) -> None:
        """Keep the rows where `keep` is True and whose job is alive (`now`: the time the rows of cancelled
        jobs leave, for take_freed)."""
        if self.dead:
            alive = self._alive()
            self.dropped += int(np.count_nonzero(~alive))
            keep = keep & alive
            for jid in self.dead if self.cancelled_at else ():
                since = self.cancelled_at.pop(jid, None)
                if since is not None:
                    self.freed.append(now - since)
            self.dead.clear()
        idx = keep.nonzero()[0]
        if len(idx) == len(keep):
            return
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
    cuts = change.nonzero()[0]
    if not len(cuts):  # one run (a lone job's rows): the common case at light load
        return [0], [len(keys[0])]
    starts = [0, *(cuts + 1).tolist()]
    ends = [*starts[1:], len(keys[0])]
    return starts, [b - a for a, b in zip(starts, ends, strict=True)]


def row_index(idx: np.ndarray, x: Tensor) -> Tensor:
    """Row indices for x (on x's device)."""
    i = torch.from_numpy(idx)
    return i if x.device.type == "cpu" else i.to(x.device, non_blocking=True)
