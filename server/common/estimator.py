"""Running estimate of one scheduler iteration's wall time as a function of the rows in the network call."""

from __future__ import annotations

import bisect


class CallTimer:
    """EMA of iteration seconds per observed batch size; linear in between, proportional beyond."""

    def __init__(self, alpha: float = 0.2, default: float = 1e-3):
        self.alpha, self.default = alpha, default
        self.sizes: list[int] = []  # sorted observed batch sizes
        self.ema: dict[int, float] = {}

    def observe(self, rows: int, seconds: float) -> None:
        if rows < 1 or seconds < 0:
            return
        if rows not in self.ema:
            bisect.insort(self.sizes, rows)
            self.ema[rows] = seconds
        else:
            self.ema[rows] += self.alpha * (seconds - self.ema[rows])

    def predict(self, rows: int) -> float:
        """Seconds for one iteration of `rows` rows (never below the smallest observation)."""
        if not self.sizes:
            return self.default * max(1, rows)
        rows = max(1, rows)
        if rows in self.ema:
            return self.ema[rows]
        i = bisect.bisect_left(self.sizes, rows)
        if i == 0:
            return self.ema[self.sizes[0]]
        lo = self.sizes[i - 1]
        if i == len(self.sizes):  # beyond the largest: assume time proportional to rows (pessimistic)
            return self.ema[lo] * rows / lo
        hi = self.sizes[i]
        f = (rows - lo) / (hi - lo)
        return self.ema[lo] + f * (self.ema[hi] - self.ema[lo])


class ReturnPath:
    """The time from an engine core sending a result to the API process holding it (the result's queue in
    the core's socket, the API's event loop, decoding), which a request's deadline must also cover. "auto"
    steps plan to finish this much before the deadline. Estimate: EMA of the mean plus `k` EMAs of the
    absolute deviation (a high quantile without storing samples), capped at `cap` of the deadline."""

    def __init__(self, alpha: float = 0.1, k: float = 2.0, cap: float = 0.5):
        self.alpha, self.k, self.cap = alpha, k, cap
        self.mean: float | None = None
        self.dev = 0.0

    def observe(self, seconds: float) -> None:
        if not 0 <= seconds < 60:  # clock steps or a stalled process: not a return path
            return
        if self.mean is None:
            self.mean = seconds
            return
        self.dev += self.alpha * (abs(seconds - self.mean) - self.dev)
        self.mean += self.alpha * (seconds - self.mean)

    def margin(self, budget: float) -> float:
        """Seconds to reserve out of a deadline `budget` seconds away."""
        if self.mean is None:
            return 0.0
        return min(self.mean + self.k * self.dev, self.cap * max(0.0, budget))


class ReportedWait:
    """The least queue wait an engine core last reported (with every result it sends: messages.Done.wait_s;
    the wait once waiting "auto" jobs gave up all the steps they could, admission.least_wait),
    aged by the time since: the API process's view of the core's queue, so a request the core would
    refuse is refused before it is sent, at once, whatever the core is computing. The core checks again
    (server.core_process.admission), so a stale view can only let a request through, never wrongly keep
    one out: the queue never drains faster than real time.

    Only a fresh report counts (at most `fresh` seconds old; then 0). With several API processes a core
    sends its wait only to the one whose request finished: another process's requests (cancelled, or
    refused by the core) can empty the queue with no report reaching this one, and a process that kept
    shedding by an old large value would send nothing and so never learn that the core went idle. Past
    `fresh`, requests go through to the core's own check, whose answers (results and refusals both carry
    `wait_s`) refresh the view."""

    FRESH = 0.1  # seconds: a few steps at serving batch sizes; longer is the core's own check's job

    def __init__(self, fresh: float = FRESH):
        self.wait, self.at, self.fresh = 0.0, 0.0, fresh

    def observe(self, wait: float, at: float) -> None:
        if at >= self.at:
            self.wait, self.at = wait, at

    def now(self, now: float) -> float:
        """Predicted seconds a request sent at `now` waits in the core's queue; 0 from a stale report."""
        if now - self.at > self.fresh:
            return 0.0
        return max(0.0, self.wait - (now - self.at))
