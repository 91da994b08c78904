"""Admission by predicted time: a request the core cannot finish in time is refused at once (429 with
Retry-After), not queued to miss its deadline seconds later.

The prediction uses only the scheduler's counters and its call timer (CallTimer: seconds per iteration
by rows), so a refusal costs a few microseconds whatever the queue holds (O(max_steps), no simulation):

    wait   = 0                                   if the new rows fit the next batch (they join at the
                                                 next step boundary; step-level batching)
           = ceil(work ahead / max_batch) * t(max_batch)   otherwise (the queue drains at full batches)
    finish = wait + steps * ceil(rows / max_batch) * t(busy rows)

Two bounds refuse: the request's own deadline (finish past it, less the result's way back), and the
server-wide `max_queue_ms` on the wait (the latency an accepted request may pay for the queue ahead).

A 429 says "retry later", so it is sent only when the queue is what stands in the way, with Retry-After
the time until the wait would fit. A deadline the request's own steps miss even with no wait (compute
alone over budget) is not the queue's fault: early exit can cut any row to one jump (early_exit.py), so
the request is admitted when one step fits (early exit finishes it in time, with fewer steps), and
refused with Unmeetable (504, not retryable) when not even one step on an idle core fits. With early exit
off (`--early-exit off`, the choose-once baseline) the request's own steps must fit.

Before either bound refuses, the "auto" requests still waiting to start give up steps (`make_room`): they
asked for the best steps that fit their deadlines, and a step less each (finishing them sooner) is a
better trade than a 429 for the request behind them. Re-planning, like early exit: off with it.
"""

from __future__ import annotations

import math

from server.core_process.scheduler import DeadlineExceeded, QueueFull, Scheduler, SchedulingError


class Refused(QueueFull):
    """A request refused by its predicted time; the API answers 429 with Retry-After."""

    def __init__(self, message: str, retry_after: float):
        SchedulingError.__init__(self, message)
        self.retry_after = retry_after


class Unmeetable(DeadlineExceeded):
    """A deadline not even one step on an idle core can meet: retrying cannot help (504, no Retry-After)."""


def wait_seconds(s: Scheduler, rows: int = 1, slack: int = 0) -> float:
    """Predicted seconds until a job of `rows` network rows queued now is first admitted (`slack`: with
    that many row-steps of the work ahead given up first)."""
    b = s.max_batch
    if s.batching == "step" and s.rows + s.waiting_rows() + min(rows, b) <= b:
        return 0.0
    return math.ceil(max(0, s.pending_work() - slack) / b) * s.timer.predict(b)


def least_wait(s: Scheduler, rows: int = 1) -> float:
    """The shortest wait `make_room` can give a job of `rows` rows: every waiting "auto" job not started
    cut to one step. What the API processes shed by (a request they refuse, the core would refuse too)."""
    return wait_seconds(s, rows, s.auto_slack if s.exit_early else 0)


def finish_seconds(s: Scheduler, rows: int, steps: int, wait: float | None = None) -> float:
    """Predicted seconds from now until a job of `rows` rows and `steps` steps queued now is done."""
    b = s.max_batch
    wait = wait_seconds(s, rows) if wait is None else wait
    busy = min(b, s.rows + s.waiting_rows() + rows)
    return wait + steps * math.ceil(rows / b) * s.timer.predict(busy)


def check(s: Scheduler, rows: int, steps: int, budget: float, max_queue: float) -> int:
    """Refused unless a job of `rows` rows and `steps` steps (the fewest it may take: 1 for "auto") is
    predicted to finish within `budget` seconds and to wait at most `max_queue` seconds. A job whose own
    `steps` miss `budget` even with no wait is planned at one step (early exit cuts it to fit); one whose
    single step misses it with no wait is Unmeetable (its own steps, with early exit off). Changes
    nothing: it returns the row-steps the waiting "auto" jobs must give up for the job to fit (0: none),
    which the caller cuts (Scheduler.shorten) once the job is built."""
    wait, cut = wait_seconds(s, rows), 0
    if steps > 1 and s.exit_early and finish_seconds(s, rows, steps, 0.0) > budget:
        steps = 1  # never fits as asked: early exit will cut it, so only its one jump must fit
    compute = finish_seconds(s, rows, steps, 0.0)
    if s.exit_early and compute <= budget and (wait > max_queue or wait + compute > budget):
        wait, cut = make_room(s, rows, min(max_queue, budget - compute), wait)
    if wait > max_queue:
        raise Refused(
            f"overloaded: predicted queue wait {1e3 * wait:.0f} ms is over the server's bound of "
            f"{1e3 * max_queue:.0f} ms",
            retry_after(queued(s, rows, wait) - max_queue),
        )
    if compute > budget:
        raise Unmeetable(
            f"deadline_ms too short: {steps} step(s) take about {1e3 * compute:.0f} ms even with no queue, "
            f"the deadline leaves {1e3 * max(0.0, budget):.0f} ms"
        )
    finish = wait + compute
    if finish > budget:
        excess = queued(s, rows, wait) + compute - budget  # = wait - (budget - compute): the queue part only
        raise Refused(
            f"overloaded: predicted finish in {1e3 * finish:.0f} ms is past the request's deadline "
            f"({1e3 * max(0.0, budget):.0f} ms)",
            retry_after(excess),
        )
    return cut


def queued(s: Scheduler, rows: int, wait: float) -> float:
    """The wait Retry-After counts from (computed on refusals only): the least wait `make_room` can give,
    or `wait` itself with re-planning off."""
    return least_wait(s, rows) if s.exit_early else wait


def make_room(s: Scheduler, rows: int, limit: float, wait: float) -> tuple[float, int]:
    """(the predicted wait, the row-steps to cut) of a job of `rows` rows once the waiting "auto" jobs that
    have not started give up what brings it within `limit` seconds; (`wait`, 0) when all they could give
    is not enough. The queue drains at full batches, so the work ahead must fall to floor(limit /
    t(max_batch)) batches. O(1): nothing is cut here (Scheduler.shorten does, and may take a little more:
    whole job-steps)."""
    b = s.max_batch
    batches = math.floor(max(0.0, limit) / max(s.timer.predict(b), 1e-9) + 1e-9)
    work = s.pending_work() - batches * b
    if 0 < work <= s.auto_slack:
        return min(wait_seconds(s, rows, work), limit), work  # min: float rounding, not a real excess
    return wait, 0


CAP_FLOOR = 8  # rows: the cap never splits one step of an 8-sample request over two calls


def batch_cap(costs: dict[int, float], share: float, floor: int = CAP_FLOOR, free: float = 0.0) -> int:
    """The largest batch worth filling: the smallest measured batch size of at least `floor` rows whose rows
    per second reach `share` of the best measured (costs: seconds of one iteration by rows), or the largest
    whose iteration takes at most `free` seconds if that is larger (a step that short costs a request
    nothing it notices, and where calls are that short the idle timing undervalues big batches: served,
    every iteration also pays for receiving, retiring and sending, so on digits 128 rows served 4-17% more
    8x2 requests than 64 where the idle costs said 6%, and the knee, within a few percent of its edge
    from 16 to 128 rows, chose 16, 32 or 64 from one start to the next). Past it a
    bigger batch buys little throughput and makes every row in it slower: at 28x28 on a CPU a call's time
    grows about linearly with its rows, so 128 rows take ~0.5 s a step where 32 rows make ~95% of the rows
    per second in a quarter of the time. Requests beyond it wait in the queue instead, where `max_queue_ms`
    bounds them. The floor: the 2- and 4-row buckets exist so light load pads less, not to cut a busy
    core's batches below one multi-sample request (mnist on ONNX Runtime reaches 90% at 4 rows, and a cap
    of 4 cost 8-sample requests a fifth of their throughput)."""
    rate = {rows: rows / max(t, 1e-9) for rows, t in costs.items() if rows > 0}
    best = max(rate.values())
    least = min(floor, max(rate))
    knee = min(rows for rows, r in rate.items() if r >= share * best and rows >= least)
    return max([knee, *(rows for rows in rate if costs[rows] <= free)])


def retry_after(excess: float) -> float:
    """Whole seconds, at least 1: when the queue will likely have drained by the excess (a wait, never a
    compute time: see `check`)."""
    return float(max(1, math.ceil(excess)))
