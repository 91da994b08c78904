"""A lone request through one engine core, in process, against the naive loop: `python -m
loadtests.bench_core [--model digits] [--engine onnxruntime] [--requests 2000] [--repeat 3]`.

What the server adds to a request on an idle core, without HTTP or processes: the core's path (a
Generate frame into CoreServer.handle, EngineCore.step until its Done frame is out: admission, noise,
scheduling, the engine calls, retiring, the result's bytes and message) against the naive endpoint's
loop (loadtests.baselines: noise, the engine call and the flow-map step per step, the result's bytes),
one request of each in turn so both see the same box. The engine is timed inside both (the same
engine object), so "bookkeeping" is everything else. Prints medians (min-max over --repeat runs) and
the core's total as a ratio to the naive loop's, per workload (samples x steps).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from flowmap.samplers import make_noise, uniform_grid
from server.common import messages as m
from server.common.settings import ServerSettings
from server.core_process import ops
from server.core_process.build import build_core, warm_up
from server.core_process.process import CoreServer

WORKLOADS = ((1, 1), (8, 2), (1, 4))


class Timed:
    """The engine, with the seconds spent inside it added up."""

    def __init__(self, engine):
        self.engine, self.seconds = engine, 0.0

    def __call__(self, *args):
        t0 = time.perf_counter()
        try:
            return self.engine(*args)
        finally:
            self.seconds += time.perf_counter() - t0


def naive(engine, shape, n: int, steps: int, seed: int) -> bytes:
    """The naive endpoint's compute (loadtests.baselines), PNG aside: the result's float32 bytes."""
    x = make_noise(n, shape, seed)
    y = torch.tensor([seed % 10] * n, dtype=torch.long)
    grid = uniform_grid(steps).tolist()
    for s, t in zip(grid[:-1], grid[1:], strict=True):
        sv, tv = torch.full((n,), s), torch.full((n,), t)
        x = ops.step(x, engine(x, sv, tv, y), sv, tv)
    return x.numpy().tobytes()


def through_core(server: CoreServer, n: int, steps: int, seed: int) -> bytes:
    g = m.Generate(id=seed, n=n, seed=seed, steps=steps, labels=[seed % 10] * n, guidance=1.0, deadline=1e12)
    server.handle(1, m.encode(g))
    while not server.outbox:
        server.core.step(emit=False)
    server.core.emit()
    frame = server.outbox.pop()[1]
    server.outbox.clear()
    return frame


def run(server: CoreServer, timed: Timed, shape, n: int, steps: int, requests: int) -> dict[str, float]:
    """Median microseconds per request: core and naive totals, and the engine inside each."""
    out = {"core": [], "core_engine": [], "naive": [], "naive_engine": []}
    for i in range(requests + 100):
        for kind in ("core", "naive"):
            timed.seconds = 0.0
            t0 = time.perf_counter()
            if kind == "core":
                through_core(server, n, steps, i)
            else:
                naive(timed, shape, n, steps, i)
            if i >= 100:  # warm
                out[kind].append(time.perf_counter() - t0)
                out[kind + "_engine"].append(timed.seconds)
    return {k: 1e6 * statistics.median(v) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_core", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="digits")
    p.add_argument("--engine", default="onnxruntime")
    p.add_argument("--requests", type=int, default=2000, help="requests of each kind per run")
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    settings = ServerSettings(models=[a.model], engine=a.engine, device="cpu", threads=1)
    with torch.inference_mode():
        core, model, _ = build_core(a.model, settings)
        warm_up(core, model, settings)
        timed = Timed(core.executor.engine)
        core.executor.engine = timed
        server = CoreServer(core, model, settings, link=None)
        print(f"{a.model} on {a.engine}, one torch thread; us per request: median (min-max, {a.repeat} runs)")
        print(
            "| samples x steps | core | its engine | its bookkeeping | naive loop | its engine | "
            "its bookkeeping | core / naive |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for n, steps in WORKLOADS:
            runs = [run(server, timed, model.shape, n, steps, a.requests) for _ in range(a.repeat)]
            span = lambda f, runs=runs: f"{min(map(f, runs)):.0f}-{max(map(f, runs)):.0f}"
            ratio = sorted(r["core"] / r["naive"] for r in runs)
            print(
                f"| {n}x{steps} | {span(lambda r: r['core'])} | {span(lambda r: r['core_engine'])} | "
                f"{span(lambda r: r['core'] - r['core_engine'])} | {span(lambda r: r['naive'])} | "
                f"{span(lambda r: r['naive_engine'])} | {span(lambda r: r['naive'] - r['naive_engine'])} | "
                f"{ratio[0]:.2f}-{ratio[-1]:.2f}x |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
