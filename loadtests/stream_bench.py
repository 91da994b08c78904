"""What streaming costs: `python -m loadtests.stream_bench [--model mnist] [--seconds 10] [--rounds 2]`.

Starts the real server (one torch thread) and measures, from this process:
1. time to first event: a streamed K-step request's first `preview` against a whole 1-step request, on an
   idle server (medians of --probes each, alternated);
2. the throughput of 31 closed-loop non-streaming clients beside a 32nd client that streams, against the
   same 32 clients with none streaming (per-client completions per second; --rounds pairs of phases in
   ABBA order, so a linear drift from other load on the machine falls on both; the change reported is
   the median of the pairs' ratios).
Every request: 1 sample, --steps steps, PNG output, its own seed. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import httpx
from httpx_sse import aconnect_sse

from loadtests.procs import start_module


def body(i: int, steps: int, stream: bool = False) -> dict:
    return {"num_samples": 1, "steps": steps, "seed": i, "stream": stream}


async def streamed(c: httpx.AsyncClient, i: int, steps: int) -> tuple[float, int]:
    """(seconds to the first event, events) of one streamed request."""
    t0, first, n = time.perf_counter(), None, 0
    async with aconnect_sse(c, "POST", "/v1/generate", json=body(i, steps, True)) as source:
        async for e in source.aiter_sse():
            first = first if first is not None else time.perf_counter() - t0
            n += 1
            if e.event == "error":
                raise RuntimeError(e.data)
    return first, n


async def first_event(url: str, steps: int, probes: int) -> tuple[float, float]:
    """Median seconds: a whole 1-step request, and the first event of a streamed `steps`-step request."""
    one, first = [], []
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        for i in range(probes + 3):  # the first 3 pairs warm the connection and the encoders
            t0 = time.perf_counter()
            r = await c.post("/v1/generate", json=body(i, 1))
            r.raise_for_status()
            dt = time.perf_counter() - t0
            fe, n = await streamed(c, i, steps)
            assert n == steps + 1, n
            if i >= 3:
                one.append(dt)
                first.append(fe)
    return statistics.median(one), statistics.median(first)


async def closed_loop(
    url: str, clients: int, streaming: int, seconds: float, steps: int
) -> tuple[float, int]:
    """(completions per second per non-streaming client, streamed requests done) over `seconds`."""
    done, streams, end = [0], [0], time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients + 1)

    async def plain(c, k):
        i = k * 1_000_000
        while time.perf_counter() < end:
            (await c.post("/v1/generate", json=body(i, steps))).raise_for_status()
            done[0], i = done[0] + 1, i + 1

    async def stream(c, k):
        i = k * 1_000_000
        while time.perf_counter() < end:
            await streamed(c, i, steps)
            streams[0], i = streams[0] + 1, i + 1

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
        t0 = time.perf_counter()
        kinds = [stream] * streaming + [plain] * (clients - streaming)
        await asyncio.gather(*(f(c, k) for k, f in enumerate(kinds)))
        elapsed = time.perf_counter() - t0
    return done[0] / elapsed / (clients - streaming), streams[0]


def measure(url: str, a: argparse.Namespace) -> dict:
    one, first = asyncio.run(first_event(url, a.steps, a.probes))
    base, mixed, streams = [], [], 0
    for i in range(a.rounds):
        for streaming in (0, 1) if i % 2 == 0 else (1, 0):
            rate, n = asyncio.run(closed_loop(url, a.clients, streaming, a.seconds, a.steps))
            (mixed if streaming else base).append(rate)
            streams += n
    change = statistics.median(m / b - 1 for b, m in zip(base, mixed, strict=True))
    b, m = statistics.mean(base), statistics.mean(mixed)
    return dict(one=one, first=first, base=b, mixed=m, change=change, rounds=(base, mixed), streams=streams)


def report(a: argparse.Namespace, r: dict) -> str:
    change = 100 * r["change"]
    pairs = ", ".join(f"{b:.2f}/{m:.2f}" for b, m in zip(*r["rounds"], strict=True))
    rows = [
        "| measure | value |",
        "|---|---|",
        f"| whole 1-step request, idle (median of {a.probes}) | {1e3 * r['one']:.1f} ms |",
        f"| first event of a streamed {a.steps}-step request (median) | {1e3 * r['first']:.1f} ms |",
        f"| ratio (goal <= 1.2) | {r['first'] / r['one']:.2f} |",
        f"| per-client req/s, {a.clients} plain clients (mean) | {r['base']:.2f} |",
        f"| per-client req/s, {a.clients - 1} plain + 1 streaming (mean) | {r['mixed']:.2f} |",
        f"| throughput change of the plain clients, median of pairs (goal >= -5%) | {change:+.1f}% |",
        f"| pairs (plain only / with a stream), req/s per client | {pairs} |",
        f"| streamed requests completed | {r['streams']} |",
    ]
    return f"model {a.model}, engine {a.engine}, {a.steps} steps, {a.seconds:g} s per phase\n\n" + "\n".join(
        rows
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.stream_bench", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="mnist")
    p.add_argument("--engine", default="eager")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--probes", type=int, default=30)
    a = p.parse_args(argv)
    flags = ["--max-batch-size", "64", "--max-queue", "4096", "--threads", "1", "--log-level", "warning"]
    srv = start_module("server", a.model, a.engine, "/readyz", *flags, "--max-steps", str(max(4, a.steps)))
    try:
        print(report(a, measure(srv.url, a)))
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
