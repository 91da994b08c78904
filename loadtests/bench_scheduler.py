"""Scheduler cost per iteration against rows in flight: `python -m loadtests.bench_scheduler`.

Times only the scheduler's own work (next_batch + update: admit, step bookkeeping, retire), with the
network replaced by a copy, at steady state: whenever a request finishes an identical one is queued,
so the row count stays fixed. Two mixes per row count R:
- "one request": a single R-sample request of 4 steps (rows admitted together, retired together);
- "R requests": R one-sample requests with steps cycling 1..4 (a quarter of the rows retire and
  are replaced on every iteration: per-request work grows with R, per-row work must not).
Prints the median microseconds per iteration (over --repeat runs: min-max) and the ratio to R = 1.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from flowmap.samplers import make_noise
from server.core_process.scheduler import Batch, Job, Scheduler

SHAPE = [1, 8, 8]


def run(rows: int, mix: str, iters: int) -> float:
    """Median seconds of scheduler work per iteration at `rows` rows in flight."""
    sched = Scheduler(max_batch=max(rows, 1), max_queue=10_000, max_wait=0.0, max_steps=4)
    noise = make_noise(rows, SHAPE, 0)

    def refill(j: Job) -> None:
        sched.submit(Job(j.noise, j.labels, j.steps, on_done=refill), now)

    now = 0.0
    if mix == "one":
        sched.submit(Job(noise, [1] * rows, 4, on_done=refill), now)
    else:
        for i in range(rows):
            sched.submit(Job(noise[i : i + 1], [i % 10], 1 + i % 4, on_done=refill), now)
    times = []
    for i in range(iters + 20):
        t0 = time.perf_counter()
        plan = sched.next_batch(now)
        t1 = time.perf_counter()
        assert isinstance(plan, Batch) and plan.n == rows, (plan, rows)
        x_next = plan.x.clone()  # stands in for the network call (not timed)
        t2 = time.perf_counter()
        sched.update(plan, x_next, now)
        t3 = time.perf_counter()
        now += 1e-3
        if i >= 20:  # warm
            times.append((t1 - t0) + (t3 - t2))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.bench_scheduler", description=__doc__.split("\n")[0]
    )
    p.add_argument("--rows", default="1,4,16,64", help="row counts (comma-separated)")
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = [int(v) for v in a.rows.split(",")]
    print("| rows | one request: us/iter | ratio to 1 row | R requests: us/iter | ratio to 1 row |")
    print("|---:|---:|---:|---:|---:|")
    base = {}
    for r in rows:
        cells = []
        for mix in ("one", "many"):
            us = sorted(1e6 * run(r, mix, a.iters) for _ in range(a.repeat))
            base.setdefault(mix, us)
            ratio = f"{us[0] / base[mix][0]:.2f}-{us[-1] / base[mix][-1]:.2f}x"
            cells += [f"{us[0]:.1f}-{us[-1]:.1f}", ratio]
        print(f"| {r} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
