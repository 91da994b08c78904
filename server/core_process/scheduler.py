"""Step-level scheduler: which samples share the next network call (schedule -> execute -> update).

Each request (a Job) contributes rows, one per sample, each on its own uniform time grid. Every
iteration packs up to `max_batch` network rows -- any mix of step counts, classes and guidance -- into
one call with per-row (s, t, y, w); rows leave when their grid ends and waiting ones join at step
boundaries. This is iteration-level batching (Orca, OSDI'22; vLLM) applied to flow-map steps.

Pure bookkeeping: no threads, no I/O, no network calls; `server.core_process.engine_core` drives it and
the unit tests drive it with a fake engine. Times are plain floats (seconds) supplied by the caller.
This module owns the queue and the policy (intake, admission, next batch, update, retire); its parts:
`jobs` (the data types, re-exported here), `rows` (the state arrays of the rows in flight, dropped
rows), `forecast` (predictions: "auto" steps, start delay, Retry-After), `preview` (SSE previews),
`early_exit` (rows that jump to data to meet a deadline).

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

import math
from collections import deque

import numpy as np
import torch
from torch import Tensor

from server.common.estimator import CallTimer
from server.core_process import early_exit, preview
from server.core_process.demand import Demand
from server.core_process.forecast import Forecast
from server.core_process.jobs import (
    Batch,
    Cancelled,
    DeadlineExceeded,
    Job,
    QueueFull,
    SchedulingError,
    Steer,
    SteerRun,
)
from server.core_process.rows import Rows, grid_table, row_index, runs

__all__ = [
    "Batch",
    "Cancelled",
    "DeadlineExceeded",
    "Job",
    "QueueFull",
    "Scheduler",
    "SchedulingError",
    "Steer",
    "SteerRun",
]


class Scheduler(Rows, Forecast):
    def __init__(
        self,
        max_batch: int,
        max_queue: int,
        max_wait: float,
        max_steps: int,
        timer: CallTimer | None = None,
        batching: str = "step",
        exit_early: bool = True,
    ):
        if batching not in ("step", "request"):
            raise ValueError(f"batching must be 'step' or 'request', got {batching!r}")
        self.max_batch, self.max_queue, self.max_wait = max_batch, max_queue, max_wait
        self.hard_max = max_batch  # the engine's limit; max_batch may be lowered below it (build.warm_up)
        self.max_steps, self.batching = max_steps, batching
        self.exit_early = exit_early  # False: steps are chosen once, at admission (the baseline)
        self.demand = Demand()  # the arrivals' rates: what "auto" steps can afford (EngineCore.admit)
        self.queue_bound = math.inf  # seconds of queue wait past which requests are refused (EngineCore)
        self.timer = timer or CallTimer()
        self.grid = grid_table(max_steps)
        self.waiting: deque[Job] = deque()
        self.jobs: dict[int, Job] = {}  # every job not yet done (waiting or in flight), by id
        self.waiting_work = 0  # row-steps of the samples not yet admitted (kept, not recounted: O(1))
        self.auto_slack = 0  # of those, the row-steps "auto" jobs not yet started could give up (shorten)
        self._waiting_rows = 0
        self.next_deadline = math.inf
        self.previewing = 0  # jobs with on_preview not yet done: 0 keeps previews off the plain path
        super().__init__()  # the rows in flight: none yet

    # ---------------------------------------------------------------- intake
    def submit(self, job: Job, now: float, most: int | None = None) -> None:
        """Queue a job; resolves "auto" steps here (at most `most`). QueueFull as in `check_room`."""
        self.check_room(job.n * job.rows_per_sample)
        if job.steps is None:
            job.auto, job.steps = True, min(self.choose_steps(job, now), most or self.max_steps)
        if not 1 <= job.steps <= self.max_steps:
            raise ValueError(f"steps must be in 1..{self.max_steps}, got {job.steps}")
        job.arrival, job.remaining = now, job.n
        self.waiting.append(job)
        self._waiting_rows += job.n * job.rows_per_sample
        self.waiting_work += job.n * job.rows_per_sample * job.steps
        self.auto_slack += self._slack(job)
        self.jobs[job.id] = job
        self.previewing += job.on_preview is not None
        if job.deadline is not None:
            self.next_deadline = min(self.next_deadline, job.deadline)
        early_exit.note(self, job)

    def check_room(self, rows: int) -> None:
        """QueueFull when `max_queue` requests already wait and `rows` more would not fit the next batch
        anyway (a burst that fits the batch is never refused). O(1): cheap enough for a flood."""
        if len(self.waiting) >= self.max_queue and self.rows + self._waiting_rows + rows > self.max_batch:
            raise QueueFull(self.retry_after())

    def admit_waiting(self, now: float) -> None:
        """Admit waiting jobs into free rows now (call only between iterations, as next_batch does)."""
        if self.batching == "step" or not self.in_flight():
            self._admit(now)

    def cancel(self, job: Job, now: float, since: float | None = None) -> None:
        """End `job`; its rows in flight are dropped at the next step boundary (next_batch). With `since`,
        when the API process cancelled it (time.monotonic(), shared by the host's processes), the time from
        then to the drop is kept for take_freed; a cancel without one (a closed connection's jobs) or with
        one that cannot be (after `now`, or an hour before it) is not timed."""
        if job.done:
            return
        if job.rows_in_flight > 0 and since is not None and now - 3600 < since <= now:
            self.cancelled_at[job.id] = since
        self._finish(job, now, Cancelled("request cancelled"))

    # ---------------------------------------------------------------- schedule / update
    def next_batch(self, now: float) -> Batch | float | None:
        """The next batch; or seconds to wait for the batching window; or None when idle."""
        self.expire(now)
        if self.dead:  # drop the rows of jobs that ended early
            self._compact(np.ones(self.in_flight(), bool), now)
        if not self.in_flight():
            if not self.waiting:
                return None
            wait = self.waiting[0].arrival + self.max_wait - now
            if wait > 0 and self.waiting_rows() < self.max_batch:
                return wait
        if self.batching == "step" or not self.in_flight():
            self._admit(now)
        if self.exit_early:
            early_exit.plan(self, now)
        s, t = self.grid[self.K, self.k], self.grid[self.K, self.k + 1]
        if np.count_nonzero(self.cut):
            t = np.where(self.cut, np.float32(0), t)
        s, t = torch.from_numpy(s), torch.from_numpy(t)
        y, w = torch.from_numpy(self.y), torch.from_numpy(self.w)
        pv = None
        if self.previewing and np.count_nonzero(self.pv):
            pv = torch.from_numpy(self.pv.nonzero()[0])
        if not np.count_nonzero(self.key):
            return Batch(x=self.x, s=s, t=t, y=y, w=w, rows=self.rows, preview=pv)
        keys, k = torch.from_numpy(self.key), torch.from_numpy(self.k)
        steer = self._steer_runs(keys)
        return Batch(x=self.x, s=s, t=t, y=y, w=w, rows=self.rows, keys=keys, k=k, steer=steer, preview=pv)

    def _steer_runs(self, keys: Tensor) -> list[SteerRun] | None:
        """The steered rows as runs of one job at one step (contiguous: admitted together, kept in order)."""
        if not np.count_nonzero(self.pk):
            return None
        out = []
        for a, n in zip(*runs(self.job, self.k), strict=True):
            b = a + n
            job = self.jobs.get(int(self.job[a])) if self.pk[a] else None
            if job is None or job.steer is None:  # not steered, or ended early (dropped at compaction)
                continue
            gk = keys[a : b : job.steer.particles]
            prev = torch.from_numpy(self.pot[a:b])
            out.append(SteerRun(job=job, start=a, stop=b, k=int(self.k[a]), keys=gk, prev=prev))
        return out or None

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
            preview.hand_over(self, batch.preview.numpy(), batch.x0)
        self.x, self.k = x_next, self.k + 1
        done = (self.k == self.K) | self.cut  # [R]
        live = done & self._alive() if self.dead else done
        idx = live.nonzero()[0]
        if len(idx):
            ids = self.job[idx]
            rows = x_next[row_index(idx, x_next)] if len(idx) < len(live) else x_next
            starts, counts = runs(ids)  # one job's rows
            chunks = rows.split(counts) if len(counts) > 1 else (rows,)
            # a job's rows are admitted (and so finish) in sample order: its chunks concatenate in order
            for jid, chunk in zip(ids[starts].tolist(), chunks, strict=True):
                job = self.jobs.get(jid)  # None: ended while this loop ran (a result's send failed, and
                if job is not None:  # the closed connection cancelled its other jobs: CoreServer.dropped)
                    self._collect(job, chunk, now)
        self._compact(~done, now)

    def fail(self, batch: Batch, error: Exception, now: float) -> None:
        """A failed network call fails the requests in it, nothing else."""
        for jid in np.unique(self.job).tolist():
            job = self.jobs.get(jid)
            if job is not None:
                self._finish(job, now, error)
        self._compact(np.zeros(self.in_flight(), bool), now)

    def expire(self, now: float) -> None:
        if now <= self.next_deadline:
            return
        for job in [j for j in self.jobs.values() if j.deadline is not None and now > j.deadline]:
            self._finish(job, now, DeadlineExceeded("deadline passed"))
        self.next_deadline = min(
            (j.deadline for j in self.jobs.values() if j.deadline is not None), default=math.inf
        )

    # ---------------------------------------------------------------- queries
    def waiting_rows(self) -> int:
        return self._waiting_rows

    def queued(self) -> int:
        """Requests waiting for their first (or next) admission."""
        return len(self.waiting)

    def observe(self, rows: int, seconds: float) -> None:
        """One iteration of `rows` network rows took `seconds` (the "auto" steps estimate learns it)."""
        self.timer.observe(rows, seconds)

    def shorten(self, work: int) -> int:
        """Take at least `work` row-steps off the waiting "auto" jobs that have not started, a step at a time
        from those with the most steps (the latest first among equals), none below one step. Their clients
        asked for the best steps that fit; this lets in a request that the queue bound would refuse, for a
        step of quality each, and only brings their own finish nearer. Returns the most steps such a job
        keeps (0, and nothing changes, when `auto_slack` cannot cover `work`): an "auto" request let in by
        the cut is given no more (`submit`'s `most`)."""
        if work <= 0 or work > self.auto_slack:
            return 0
        jobs = [j for j in self.waiting if j.auto and j.first_admit is None and j.steps > 1]
        taken = 0
        while taken < work and jobs:
            top = max(j.steps for j in jobs)
            for j in reversed(jobs):
                if j.steps == top and taken < work:
                    rows = j.n * j.rows_per_sample
                    j.steps -= 1
                    taken += rows
                    self.waiting_work -= rows
                    self.auto_slack -= rows
            jobs = [j for j in jobs if j.steps > 1]
        return max((j.steps for j in jobs), default=1)

    # ---------------------------------------------------------------- internals
    def _slack(self, job: Job) -> int:
        """The row-steps `job` (waiting, not started) could give up: all but one step, if "auto"."""
        return job.n * job.rows_per_sample * (job.steps - 1) if job.auto else 0

    def _admit(self, now: float) -> None:
        """Move waiting samples into the state while rows are free (FIFO; one at least when empty)."""
        free, takes = max(0, self.max_batch - self.rows), []
        while self.waiting:
            job = self.waiting[0]
            r, g = job.rows_per_sample, job.group
            take = min(job.n - job.admitted, free // r)
            take -= take % g  # a steered sample's particles are admitted together
            if take == 0 and not takes and g * r > self.max_batch and self.rows + g * r <= self.hard_max:
                take = g  # a group wider than the batch cap (steered particles) joins while the engine can
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
                self.auto_slack -= self._slack(job)
                job.first_admit = now
            if job.admitted < job.n:
                break
            self.waiting.popleft()
        if takes:
            self._append(takes)

    def _collect(self, job: Job, chunk: Tensor, now: float) -> None:
        job.remaining -= chunk.shape[0]
        # a steered group's rows all hold its chosen sample: keep one row per group
        job.chunks.append(chunk if job.steer is None else chunk[:: job.group])
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
            if job.first_admit is None:
                self.auto_slack -= self._slack(job)
        self.jobs.pop(job.id, None)
        if job.on_done is not None:
            job.on_done(job)
