"""Predictions from the scheduler's counters: work queued and in flight, when a new job would start and
finish, the step count "auto" picks for a deadline, and Retry-After for a full queue.

`Forecast` is mixed into `server.core_process.scheduler.Scheduler` and only reads its state (the waiting
queue, the rows in flight, the call timer); `server.core_process.admission` uses these counters too.
"""

from __future__ import annotations

import math

import numpy as np

from server.core_process.jobs import Job

SIMULATE_MAX = 64  # waiting requests up to which start_delay simulates admission exactly


class Forecast:
    """Read-only predictions, as Scheduler methods."""

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
        """ "auto": the largest step count up to max_steps predicted to finish within the deadline, and
        no more than the arrivals can afford (server.core_process.demand)."""
        if job.deadline is None:
            return self.max_steps
        budget, rows = job.deadline - job.margin - now, job.n * job.rows_per_sample
        delay = self.start_delay(min(rows, self.max_batch))  # the same for every k: computed once
        capacity = self.max_batch / max(1e-9, self.timer.predict(self.max_batch))  # row-steps per second
        most = self.demand.affordable(now, capacity, self.max_steps, delay / self.queue_bound)
        for k in range(most, 1, -1):
            if self.predict_seconds(rows, k, delay) <= budget:
                return k
        return 1

    def retry_after(self) -> float:
        """Seconds until the queue has likely drained (at least 1)."""
        iters = math.ceil(self.pending_work() / self.max_batch)
        return max(1.0, math.ceil(iters * self.timer.predict(self.max_batch)))
