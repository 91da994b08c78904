"""Step-level scheduler: which samples share the next network call (schedule -> execute -> update).

Each request (a Job) contributes rows, one per sample, each on its own uniform time grid. Every
iteration packs up to `max_batch` network rows -- any mix of step counts, classes and guidance -- into
one call with per-row (s, t, y, w); rows leave when their grid ends and waiting ones join at step
boundaries. This is iteration-level batching (Orca, OSDI'22; vLLM) applied to flow-map steps.

The rows in flight live in contiguous arrays -- x a torch tensor on the engine's device; step k, steps
K, label y, guidance w and job id small numpy vectors (a numpy op on a few rows costs ~1 us, a torch op
~3-5 us) -- so admitting, stepping and retiring are a fixed number of array operations whatever the row
count; Python work is per job (admission, completion), never per sample. Pure bookkeeping: no threads,
no I/O, no network calls; `server.core_process.engine_core` drives it and the unit tests drive it with a
fake engine. Times are plain floats (seconds) supplied by the caller.

Policy: admission is strictly FIFO by request (a request's remaining samples keep the head of the
line until all are admitted, so no request starves); every active row advances one step per
iteration; a classifier-free-guided sample takes two network rows (conditional and null label); a
steered sample's particles (Job.steer) are admitted together and carry their last reward potential,
which the executor uses to resample them at each step boundary
(server.core_process.engine_core.Executor._resample). A job with `on_preview` asks for its jump to data
X_{s,0} at every step (the executor computes it from the step's own u, only for the rows that asked);
its samples' previews of step k are handed over together once all of them made that step.
`batching="request"` is the whole-request baseline: nothing joins until the running batch empties.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from flowmap.samplers import uniform_grid
from server.common.estimator import CallTimer
from server.common.spec import rows_per_sample
from server.core_process import early_exit

_ids = itertools.count(1)
SIMULATE_MAX = 64  # waiting requests up to which start_delay simulates admission exactly


class SchedulingError(Exception):
    """A request the scheduler refused or ended early (the API maps each subclass to a status)."""


class QueueFull(SchedulingError):
    def __init__(self, retry_after: float):
        super().__init__(f"queue full; retry after {retry_after:.0f} s")
        self.retry_after = retry_after


class DeadlineExceeded(SchedulingError):
    pass


class Cancelled(SchedulingError):
    pass


@dataclass(eq=False)
class Steer:
    """A steered job's particles: each sample is a group of `particles` consecutive rows, resampled at
    every step boundary by the reward of their jump to data (flowmap.steering.sample_particles)."""

    particles: int
    reward: Callable[[Tensor], Tensor]  # x0 [M, *shape] -> [M]
    scale: float
    select: str = "sir"  # sir (multinomial resampling) or best (best-of-N)
    name: str = ""  # the reward's built-in name (metrics label)


@dataclass(eq=False)
class SteerRun:
    """One steered job's rows [start, stop) in a batch, all at step k (whole particle groups)."""

    job: Job
    start: int
    stop: int
    k: int
    keys: Tensor  # [groups] int64: each group's first row key (its resampling draws)
    prev: Tensor  # [rows] float64: the potential at the last resampling
    pot: Tensor | None = None  # set by the executor: the new potential, rows in resampled order
    error: Exception | None = None  # set by the executor when the reward failed (fails this job only)


@dataclass(eq=False)
class Job:
    """One request: n samples sharing steps, seed and guidance; per-sample labels and t=1 noise."""

    noise: Tensor  # [n, *shape], from flowmap.samplers.make_noise(n, shape, seed)
    labels: list[int]  # [n] labels for the engine (a class, or the null label)
    steps: int | None  # None: "auto", chosen at submission from the deadline
    guidance: float = 1.0
    deadline: float | None = None  # absolute time; None: no deadline
    on_done: Callable[[Job], None] | None = None
    seed: int | None = None  # for the response only (the noise is already drawn)
    keys: list[int] | None = None  # [n] re-noise keys (sample_keys): the consistency sampler; None: flow map
    steer: Steer | None = None  # particles: noise and keys hold n * particles rows; result n samples
    margin: float = 0.0  # seconds "auto" plans to finish before the deadline (the result's way back)
    on_preview: Callable[[Job, int, Tensor], None] | None = None  # (job, step 1..K, x0 [n, *shape])
    id: int = field(default_factory=lambda: next(_ids))
    # set by the scheduler
    arrival: float = 0.0
    result: Tensor | None = None  # [n, *shape] once done
    admitted: int = 0
    remaining: int = 0
    first_admit: float | None = None
    exit_steps: int | None = None  # the fewest steps a row took when early exit finished it in one jump
    finished: float | None = None
    error: Exception | None = None
    done: bool = False
    chunks: list[Tensor] = field(default_factory=list, repr=False)
    previews: dict[int, list[Tensor]] = field(default_factory=dict, repr=False)  # step -> x0 chunks

    @property
    def n(self) -> int:
        return int(self.noise.shape[0])

    @property
    def rows_per_sample(self) -> int:
        return rows_per_sample(self.guidance)

    @property
    def group(self) -> int:
        """Rows admitted together: a steered sample's particles."""
        return self.steer.particles if self.steer is not None else 1

    @property
    def steps_taken(self) -> int | None:
        """The steps the result took: `steps`, or fewer when early exit cut a row short."""
        return self.exit_steps or self.steps

    @property
    def rows_in_flight(self) -> int:
        return self.admitted - (self.n - self.remaining)


@dataclass
class Batch:
    """What the next network call runs: every active row, one step each (x: [N, *shape]; s, t, y, w: [N]
    CPU tensors sharing memory with the scheduler's arrays)."""

    x: Tensor
    s: Tensor
    t: Tensor
    y: Tensor
    w: Tensor
    rows: int  # network rows (guided samples count twice)
    keys: Tensor | None = None  # [N] int64 re-noise keys, 0 on flow-map rows (sample_keys are never 0);
    # None: no row re-noises
    k: Tensor | None = None  # [N] int64 step index of each row (the re-noise draw's counter)
    steer: list[SteerRun] | None = None  # steered rows, per job and admission
    preview: Tensor | None = None  # [P] int64 rows whose job wants previews; None: no row does
    x0: Tensor | None = None  # [P, *shape] set by the executor: those rows' jump to data X_{s,0}

    @property
    def n(self) -> int:
        return int(self.x.shape[0])


def grid_table(max_steps: int) -> np.ndarray:
    """G[K, k] = uniform_grid(K)[k], as `flowmap sample` uses it; float32 [max_steps + 1, max_steps + 2]."""
    g = np.zeros((max_steps + 1, max_steps + 2), np.float32)
    for k in range(1, max_steps + 1):
        g[k, : k + 1] = uniform_grid(k).numpy()
    return g


class Scheduler:
    def __init__(
        self,
        max_batch: int,
        max_queue: int,
        max_wait: float,
        max_steps: int,
        timer: CallTimer | None = None,
        batching: str = "step",
    ):
        if batching not in ("step", "request"):
            raise ValueError(f"batching must be 'step' or 'request', got {batching!r}")
        self.max_batch, self.max_queue, self.max_wait = max_batch, max_queue, max_wait
        self.max_steps, self.batching = max_steps, batching
        self.timer = timer or CallTimer()
        self.grid = grid_table(max_steps)
        self.waiting: deque[Job] = deque()
        self.jobs: dict[int, Job] = {}  # every job not yet done (waiting or in flight), by id
        self.dead: set[int] = set()  # ids of jobs ended early whose rows are still in the state
        self.waiting_work = 0  # row-steps of the samples not yet admitted (kept, not recounted: O(1))
        self._waiting_rows = 0
        self.next_deadline = math.inf
        self.dropped = 0  # rows of jobs ended early dropped from the state, since the last take_dropped
        self.previewing = 0  # jobs with on_preview not yet done: 0 keeps previews off the plain path
        self._clear()

    def _clear(self) -> None:
        """The state of the rows in flight: x [R, *shape]; k, K, y, job, key [R] int64; w [R] float32."""
        self.x: Tensor | None = None
        self.k = self.K = self.y = self.job = self.key = self.pk = self.pv = np.zeros(0, np.int64)
        self.w = np.zeros(0, np.float32)
        self.pot = np.zeros(0, np.float64)  # steered rows: the potential at the last resampling
        self.cut = np.zeros(0, bool)  # rows early exit finishes in this iteration (jump to t = 0)
        self.rows = 0

    # ---------------------------------------------------------------- intake
    def submit(self, job: Job, now: float) -> None:
        """Queue a job; resolves "auto" steps here. QueueFull as in `check_room`."""
        self.check_room(job.n * job.rows_per_sample)
        if job.steps is None:
            job.steps = self.choose_steps(job, now)
        if not 1 <= job.steps <= self.max_steps:
            raise ValueError(f"steps must be in 1..{self.max_steps}, got {job.steps}")
        job.arrival, job.remaining = now, job.n
        self.waiting.append(job)
        self._waiting_rows += job.n * job.rows_per_sample
        self.waiting_work += job.n * job.rows_per_sample * job.steps
        self.jobs[job.id] = job
        self.previewing += job.on_preview is not None
        if job.deadline is not None:
            self.next_deadline = min(self.next_deadline, job.deadline)

    def check_room(self, rows: int) -> None:
        """QueueFull when `max_queue` requests already wait and `rows` more would not fit the next batch
        anyway (a burst that fits the batch is never refused). O(1): cheap enough for a flood."""
        if len(self.waiting) >= self.max_queue and self.rows + self._waiting_rows + rows > self.max_batch:
            raise QueueFull(self.retry_after())

    def admit_waiting(self, now: float) -> None:
        """Admit waiting jobs into free rows now (call only between iterations, as next_batch does)."""
        if self.batching == "step" or not self.in_flight():
            self._admit(now)

    def cancel(self, job: Job, now: float) -> None:
        if not job.done:
            self._finish(job, now, Cancelled("request cancelled"))

    # ---------------------------------------------------------------- schedule / update
    def next_batch(self, now: float) -> Batch | float | None:
        """The next batch; or seconds to wait for the batching window; or None when idle."""
        self.expire(now)
        if self.dead:  # drop the rows of jobs that ended early
            self._compact(np.ones(self.in_flight(), bool))
        if not self.in_flight():
            if not self.waiting:
                return None
            wait = self.waiting[0].arrival + self.max_wait - now
            if wait > 0 and self.waiting_rows() < self.max_batch:
                return wait
        if self.batching == "step" or not self.in_flight():
            self._admit(now)
        early_exit.plan(self, now)
        s, t = self.grid[self.K, self.k], self.grid[self.K, self.k + 1]
        if self.cut.any():
            t = np.where(self.cut, np.float32(0), t)
        s, t, y, w = (torch.from_numpy(a) for a in (s, t, self.y, self.w))
        pv = torch.from_numpy(np.flatnonzero(self.pv)) if self.previewing and self.pv.any() else None
        if not self.key.any():
            return Batch(x=self.x, s=s, t=t, y=y, w=w, rows=self.rows, preview=pv)
        keys, k = torch.from_numpy(self.key), torch.from_numpy(self.k)
        steer = self._steer_runs(keys)
        return Batch(x=self.x, s=s, t=t, y=y, w=w, rows=self.rows, keys=keys, k=k, steer=steer, preview=pv)

    def _steer_runs(self, keys: Tensor) -> list[SteerRun] | None:
        """The steered rows as runs of one job at one step (contiguous: admitted together, kept in order)."""
        if not self.pk.any():
            return None
        starts = np.flatnonzero(np.r_[True, (self.job[1:] != self.job[:-1]) | (self.k[1:] != self.k[:-1])])
        runs = []
        for a, b in zip(starts.tolist(), np.r_[starts[1:], len(self.k)].tolist(), strict=True):
            job = self.jobs.get(int(self.job[a])) if self.pk[a] else None
            if job is None or job.steer is None:  # not steered, or ended early (dropped at compaction)
                continue
            gk = keys[a : b : job.steer.particles]
            prev = torch.from_numpy(self.pot[a:b])
            runs.append(SteerRun(job=job, start=a, stop=b, k=int(self.k[a]), keys=gk, prev=prev))
        return runs or None

    def update(self, batch: Batch, x_next: Tensor, now: float) -> None:
        """Apply one computed step (x_next: [N, *shape], one row per sample) and retire finished rows."""
        if x_next.shape[0] != self.in_flight() or batch.x is not self.x:
            raise ValueError(f"{x_next.shape[0]} computed rows for {self.in_flight()} rows in flight")
        for run in batch.steer or ():
            if run.error is not None:
                if not run.job.done:  # one job may have several runs (admitted over several steps)
                    self._finish(run.job, now, run.error)
            elif run.pot is not None:
                self.pot[run.start : run.stop] = run.pot.cpu().numpy()
        if batch.x0 is not None:
            self._previews(batch.preview.numpy(), batch.x0)
        self.x, self.k = x_next, self.k + 1
        done = (self.k == self.K) | self.cut  # [R]
        live = done & self._alive() if self.dead else done
        idx = np.flatnonzero(live)
        if len(idx):
            ids = self.job[idx]
            starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])  # runs of one job's rows
            counts = np.diff(np.r_[starts, len(ids)]).tolist()
            rows = x_next[_index(idx, x_next)] if len(idx) < len(live) else x_next
            # a job's rows are admitted (and so finish) in sample order: its chunks concatenate in order
            for jid, chunk in zip(ids[starts].tolist(), rows.split(counts), strict=True):
                self._collect(self.jobs[jid], chunk, now)
        self._compact(~done)

    def _previews(self, idx: np.ndarray, x0: Tensor) -> None:
        """Hand each previewing job its samples' x0 of the step just made, once all n made it (a job
        admitted over several iterations makes step k in parts; its parts arrive in sample order)."""
        ids, ks = self.job[idx], self.k[idx]
        starts = np.flatnonzero(np.r_[True, (ids[1:] != ids[:-1]) | (ks[1:] != ks[:-1])])
        counts = np.diff(np.r_[starts, len(ids)]).tolist()
        for a, chunk in zip(starts.tolist(), x0.split(counts), strict=True):
            job = self.jobs.get(int(ids[a]))
            if job is None or job.on_preview is None:  # ended early: its rows go at the next compaction
                continue
            step = int(ks[a]) + 1
            parts = job.previews.setdefault(step, [])
            parts.append(chunk[:: job.group])  # a steered group: its first particle
            if sum(len(p) for p in parts) == job.n // job.group:  # every sample (steered: every group)
                del job.previews[step]
                job.on_preview(job, step, parts[0] if len(parts) == 1 else torch.cat(parts))

    def take_dropped(self) -> int:
        """Rows of jobs ended early (cancelled, expired, failed) dropped since the last call."""
        n, self.dropped = self.dropped, 0
        return n

    def fail(self, batch: Batch, error: Exception, now: float) -> None:
        """A failed network call fails the requests in it, nothing else."""
        for jid in np.unique(self.job).tolist():
            job = self.jobs.get(jid)
            if job is not None:
                self._finish(job, now, error)
        self._compact(np.zeros(self.in_flight(), bool))

    def expire(self, now: float) -> None:
        if now <= self.next_deadline:
            return
        for job in [j for j in self.jobs.values() if j.deadline is not None and now > j.deadline]:
            self._finish(job, now, DeadlineExceeded("deadline passed"))
        self.next_deadline = min(
            (j.deadline for j in self.jobs.values() if j.deadline is not None), default=math.inf
        )

    # ---------------------------------------------------------------- queries
    def in_flight(self) -> int:
        """Samples (state rows) in flight."""
        return len(self.k)

    def waiting_rows(self) -> int:
        return self._waiting_rows

    def queued(self) -> int:
        """Requests waiting for their first (or next) admission."""
        return len(self.waiting)

    def observe(self, rows: int, seconds: float) -> None:
        """One iteration of `rows` network rows took `seconds` (the "auto" steps estimate learns it)."""
        self.timer.observe(rows, seconds)

    def steps_left(self) -> list[int]:
        """Network rows in flight by steps left: out[j] = rows with j steps to go."""
        weights = (1 + (self.w != 1.0)) * self._alive()  # rows_per_sample, per row
        return np.bincount(self.K - self.k, weights, minlength=self.max_steps + 1).astype(int).tolist()

    def pending_work(self) -> int:
        """Row-steps still to compute for everything queued or in flight."""
        active = sum(j * r for j, r in enumerate(self.steps_left()))
        return active + self.waiting_work

    def predict_seconds(self, rows: int, steps: int, delay: float | None = None) -> float:
        """Predicted seconds to finish a new job of `rows` rows and `steps` steps queued behind all now
        (`delay`: its start_delay, when already known)."""
        b = self.max_batch
        busy = min(b, self.rows + self.waiting_rows() + rows)
        wait = 0.0 if (self.in_flight() or self.waiting) else self.max_wait
        own = steps * math.ceil(rows / b) * self.timer.predict(busy)
        return wait + (self.start_delay(min(rows, b)) if delay is None else delay) + own

    def start_delay(self, rows: int) -> float:
        """Predicted seconds until a job queued now is first admitted: a FIFO simulation by row counts
        while the queue is short; beyond SIMULATE_MAX waiting requests, the work ahead at full batches."""
        if len(self.waiting) > SIMULATE_MAX:
            return math.ceil(self.pending_work() / self.max_batch) * self.timer.predict(self.max_batch)
        depth = max([self.max_steps] + [j.steps for j in self.waiting]) + 1
        left = self.steps_left() + [0] * (depth - self.max_steps - 1)
        queue = [[j.rows_per_sample, j.n - j.admitted, j.steps] for j in self.waiting]
        queue.append([rows, 1, 0])  # the new job's first sample(s)
        busy, elapsed = sum(left), 0.0
        for _ in range(1_000_000):  # bounded: every iteration retires rows
            busy = self._admit_counts(queue, left, busy)
            if not queue:
                return elapsed
            elapsed += self.timer.predict(busy)
            busy -= left[1]
            left = [0] + left[2:] + [0]
        return elapsed

    def _admit_counts(self, queue: list[list[int]], left: list[int], busy: int) -> int:
        while queue:
            rps, n, steps = queue[0]
            take = n if rps * n <= self.max_batch - busy else max(0, self.max_batch - busy) // rps
            if busy == 0:
                take = max(take, 1)
            if take == 0:
                return busy
            if steps:
                left[steps] += take * rps
            busy += take * rps
            if take < n:
                queue[0][1] -= take
                return busy
            queue.pop(0)
        return busy

    def choose_steps(self, job: Job, now: float) -> int:
        """ "auto": the largest step count up to max_steps predicted to finish within the deadline."""
        if job.deadline is None:
            return self.max_steps
        budget, rows = job.deadline - job.margin - now, job.n * job.rows_per_sample
        delay = self.start_delay(min(rows, self.max_batch))  # the same for every k: computed once
        for k in range(self.max_steps, 1, -1):
            if self.predict_seconds(rows, k, delay) <= budget:
                return k
        return 1

    def retry_after(self) -> float:
        """Seconds until the queue has likely drained (at least 1)."""
        iters = math.ceil(self.pending_work() / self.max_batch)
        return max(1.0, math.ceil(iters * self.timer.predict(self.max_batch)))

    # ---------------------------------------------------------------- internals
    def _admit(self, now: float) -> None:
        """Move waiting samples into the state while rows are free (FIFO; one at least when empty)."""
        free, takes = max(0, self.max_batch - self.rows), []
        while self.waiting:
            job = self.waiting[0]
            r, g = job.rows_per_sample, job.group
            take = min(job.n - job.admitted, free // r)
            take -= take % g  # a steered sample's particles are admitted together
            if take == 0 and not self.in_flight() and not takes:
                take = g  # a guided sample (or particle group) wider than the whole batch runs alone
            if take == 0:
                break
            takes.append((job, job.admitted, take))
            job.admitted += take
            free = max(0, free - take * r)
            self._waiting_rows -= take * r
            self.waiting_work -= take * r * job.steps
            if job.first_admit is None:
                job.first_admit = now
            if job.admitted < job.n:
                break
            self.waiting.popleft()
        if takes:
            self._append(takes)

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
        self.x = self.x[_index(idx, self.x)]
        state = (self.k, self.K, self.y, self.w, self.job, self.key, self.pk, self.pot, self.pv, self.cut)
        self.k, self.K, self.y, self.w, self.job, self.key, self.pk, self.pot, self.pv, self.cut = (
            a[idx] for a in state
        )
        self.rows = len(idx) + int(np.count_nonzero(self.w != 1.0))  # rows_per_sample, summed

    def _collect(self, job: Job, chunk: Tensor, now: float) -> None:
        job.chunks.append(chunk[:: job.group])  # a steered group's rows all hold its chosen sample
        job.remaining -= len(chunk)
        if job.remaining == 0:
            job.result = job.chunks[0] if len(job.chunks) == 1 else torch.cat(job.chunks)
            job.chunks = []
            self._finish(job, now, None)

    def _finish(self, job: Job, now: float, error: Exception | None) -> None:
        job.done, job.error, job.finished = True, error, now
        self.previewing -= job.on_preview is not None
        if job.rows_in_flight > 0 and error is not None:
            self.dead.add(job.id)
        if job.admitted < job.n:
            self.waiting.remove(job)
            left = (job.n - job.admitted) * job.rows_per_sample
            self._waiting_rows -= left
            self.waiting_work -= left * job.steps
        self.jobs.pop(job.id, None)
        if job.on_done is not None:
            job.on_done(job)


def _index(idx: np.ndarray, x: Tensor) -> Tensor:
    """Row indices for x (on x's device)."""
    i = torch.from_numpy(idx)
    return i if x.device.type == "cpu" else i.to(x.device, non_blocking=True)
