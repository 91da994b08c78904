"""Step-level scheduler: which samples share the next network call (schedule -> execute -> update).

Each request (a Job) becomes per-sample states, each with its own time grid. Every iteration packs up
to `max_batch` rows of active samples -- any mix of step counts, classes and guidance -- into one
network call with per-sample (s, t, y); samples leave when their grid ends and waiting ones join at
step boundaries. This is iteration-level batching (Orca, OSDI'22; vLLM) applied to flow-map steps.
Pure bookkeeping: no threads, no network calls; `server.worker` drives it, and the unit tests drive
it with a fake engine. Times are plain floats (seconds) supplied by the caller.

Policy: admission is strictly FIFO by request (a request's remaining samples keep the head of the
line until all are admitted, so no request starves); every active sample advances one step per
iteration; a classifier-free-guided sample takes two rows (conditional and null label).
`batching="request"` is the whole-request baseline: nothing joins until the running batch empties.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from flowmap.samplers import uniform_grid
from server.estimator import CallTimer

_ids = itertools.count(1)


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
class Job:
    """One request: n samples sharing steps, seed and guidance; per-sample labels and t=1 noise."""

    noise: Tensor  # [n, *shape], from flowmap.samplers.make_noise(n, shape, seed)
    labels: list[int]  # [n] labels for the engine (a class, or the null label)
    steps: int | None  # None: "auto", chosen at submission from the deadline
    guidance: float = 1.0
    deadline: float | None = None  # absolute time; None: no deadline
    on_done: Callable[[Job], None] | None = None
    seed: int | None = None  # for the response only (the noise is already drawn)
    request_labels: list[int] | None = None  # the classes as the client sees them (None: unconditional)
    id: int = field(default_factory=lambda: next(_ids))
    # set by the scheduler
    arrival: float = 0.0
    grid: list[float] = field(default_factory=list)
    result: Tensor | None = None  # [n, *shape] once done
    admitted: int = 0
    remaining: int = 0
    first_admit: float | None = None
    finished: float | None = None
    error: Exception | None = None
    done: bool = False

    @property
    def n(self) -> int:
        return int(self.noise.shape[0])

    @property
    def rows_per_sample(self) -> int:
        return 1 if self.guidance == 1.0 else 2


@dataclass(eq=False)
class Sample:
    """One sample in flight: its state x_k on its own grid."""

    job: Job
    index: int
    x: Tensor  # [*shape]
    k: int = 0  # steps taken

    @property
    def s(self) -> float:
        return self.job.grid[self.k]

    @property
    def t(self) -> float:
        return self.job.grid[self.k + 1]

    @property
    def label(self) -> int:
        return self.job.labels[self.index]

    @property
    def rows(self) -> int:
        return self.job.rows_per_sample

    @property
    def steps_left(self) -> int:
        return len(self.job.grid) - 1 - self.k


@dataclass
class Batch:
    """What the next network call runs: every active sample, one step each."""

    samples: list[Sample]
    rows: int  # network rows (guided samples count twice)


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
        self.waiting: deque[Job] = deque()
        self.active: list[Sample] = []
        self.rows = 0

    # ---------------------------------------------------------------- intake
    def submit(self, job: Job, now: float) -> None:
        """Queue a job (QueueFull when the queue is at its limit); resolves "auto" steps here."""
        if len(self.waiting) >= self.max_queue:
            raise QueueFull(self.retry_after())
        if job.steps is None:
            job.steps = self.choose_steps(job, now)
        job.arrival, job.remaining = now, job.n
        job.grid = uniform_grid(job.steps).tolist()
        job.result = torch.empty_like(job.noise)
        self.waiting.append(job)

    def cancel(self, job: Job, now: float) -> None:
        if not job.done:
            self._finish(job, now, Cancelled("request cancelled"))
            self._prune()

    # ---------------------------------------------------------------- schedule / update
    def next_batch(self, now: float) -> Batch | float | None:
        """The next batch; or seconds to wait for the batching window; or None when idle."""
        self.expire(now)
        if not self.active:
            if not self.waiting:
                return None
            wait = self.waiting[0].arrival + self.max_wait - now
            if wait > 0 and self.waiting_rows() < self.max_batch:
                return wait
        if self.batching == "step" or not self.active:
            self._admit(now)
        return Batch(list(self.active), self.rows)

    def update(self, batch: Batch, x_next: Tensor, now: float) -> None:
        """Apply one computed step (x_next: [N, *shape], one row per sample) and retire finished samples."""
        rows = x_next.unbind(0)  # one call for all the row views (iterating a tensor costs more)
        if len(rows) != len(batch.samples):
            raise ValueError(f"{len(rows)} computed rows for {len(batch.samples)} samples")
        finished: dict[Job, tuple[list[int], list[int]]] = {}  # job -> (sample indices, rows)
        for i, smp in enumerate(batch.samples):
            job = smp.job
            if job.done:  # cancelled or expired while the network ran
                continue
            smp.x, smp.k = rows[i], smp.k + 1
            if smp.steps_left == 0:
                idx, src = finished.setdefault(job, ([], []))
                idx.append(smp.index)
                src.append(i)
        for job, (idx, src) in finished.items():  # one copy per finished group, not per sample
            job.result[idx] = x_next[src]
            job.remaining -= len(idx)
            if job.remaining == 0:
                self._finish(job, now, None)
        self._prune()

    def fail(self, batch: Batch, error: Exception, now: float) -> None:
        """A failed network call fails the requests in it, nothing else."""
        for job in {id(s.job): s.job for s in batch.samples}.values():
            if not job.done:
                self._finish(job, now, error)
        self._prune()

    def expire(self, now: float) -> None:
        jobs = list(self.waiting) + [s.job for s in self.active]
        for job in {id(j): j for j in jobs}.values():
            if job.deadline is not None and now > job.deadline and not job.done:
                self._finish(job, now, DeadlineExceeded("deadline passed"))
        self._prune()

    # ---------------------------------------------------------------- queries
    def waiting_rows(self) -> int:
        return sum((j.n - j.admitted) * j.rows_per_sample for j in self.waiting)

    def pending_work(self) -> int:
        """Row-steps still to compute for everything queued or in flight."""
        active = sum(s.rows * s.steps_left for s in self.active)
        return active + sum((j.n - j.admitted) * j.rows_per_sample * j.steps for j in self.waiting)

    def in_flight(self) -> int:
        return len(self.active)

    def predict_seconds(self, rows: int, steps: int) -> float:
        """Predicted seconds to finish a new job of `rows` rows and `steps` steps queued behind all now."""
        b = self.max_batch
        busy = min(b, self.rows + self.waiting_rows() + rows)
        wait = 0.0 if (self.active or self.waiting) else self.max_wait
        own = steps * math.ceil(rows / b) * self.timer.predict(busy)
        return wait + self.start_delay(min(rows, b)) + own

    def start_delay(self, rows: int) -> float:
        """Predicted seconds until a job queued now is first admitted: a FIFO simulation by row counts."""
        depth = max([self.max_steps] + [j.steps for j in self.waiting]) + 1
        left = [0] * depth  # active rows by steps left
        for s in self.active:
            left[s.steps_left] += s.rows
        queue = [[j.rows_per_sample, j.n - j.admitted, j.steps] for j in self.waiting]
        queue.append([rows, 1, 0])  # the new job's first sample(s)
        busy, elapsed = self.rows, 0.0
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
            take = n if rps * n <= self.max_batch - busy else (self.max_batch - busy) // rps
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
        budget, rows = job.deadline - now, job.n * job.rows_per_sample
        for k in range(self.max_steps, 1, -1):
            if self.predict_seconds(rows, k) <= budget:
                return k
        return 1

    def retry_after(self) -> float:
        """Seconds until the queue has likely drained (at least 1)."""
        iters = math.ceil(self.pending_work() / self.max_batch)
        return max(1.0, math.ceil(iters * self.timer.predict(self.max_batch)))

    # ---------------------------------------------------------------- internals
    def _admit(self, now: float) -> None:
        while self.waiting:
            job = self.waiting[0]
            r = job.rows_per_sample
            while job.admitted < job.n and (self.rows + r <= self.max_batch or not self.active):
                self.active.append(Sample(job, job.admitted, job.noise[job.admitted]))
                job.admitted += 1
                self.rows += r
                if job.first_admit is None:
                    job.first_admit = now
            if job.admitted < job.n:
                return
            self.waiting.popleft()

    def _finish(self, job: Job, now: float, error: Exception | None) -> None:
        job.done, job.error, job.finished = True, error, now
        if job in self.waiting:
            self.waiting.remove(job)
        if job.on_done is not None:
            job.on_done(job)

    def _prune(self) -> None:
        self.active = [s for s in self.active if not s.job.done and s.steps_left > 0]
        self.rows = sum(s.rows for s in self.active)
