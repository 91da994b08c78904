"""Time to free a gone client's rows, under load: `python -m loadtests.cancel [--model mnist] [--rate R]`.

Starts the real server (one torch thread), drives it open loop (Poisson arrivals of `--samples` x `--steps`
requests at `--rate` req/s, as loadtests.overload does) and meanwhile, every `--every` seconds, sends one
more such request on its own connection and closes the connection `--after` seconds later (uniform in the
range: mid-request), as a client that gave up does. The engine core times every cancel whose rows were in
flight, from the API process's Cancel to the rows' drop at the next step boundary
(`flowmap_cancel_free_seconds`); this reads that histogram and the engine-call one from /metrics before and
after, and prints both: issue 19's goal is a cancelled request's rows freed within one step time. What
it does not include: the API process noticing the closed connection (an event-loop turn).
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import threading
import time
from urllib.parse import urlsplit

import httpx
import numpy as np

from loadtests import openloop, overload
from loadtests.procs import start_module


def histogram(text: str, name: str, model: str) -> dict:
    """{"buckets": {le: cumulative count}, "sum", "count"} of one histogram series in a /metrics text."""
    buckets, total, count = {}, 0.0, 0.0
    for line in text.splitlines():
        if not line.startswith(name + "_") or f'model="{model}"' not in line:
            continue
        value = float(line.rsplit(" ", 1)[1])
        if line.startswith(name + "_bucket"):
            le = re.search(r'le="([^"]+)"', line).group(1)
            buckets[float(le)] = value
        elif line.startswith(name + "_sum"):
            total = value
        elif line.startswith(name + "_count"):
            count = value
    return {"buckets": dict(sorted(buckets.items())), "sum": total, "count": count}


def delta(after: dict, before: dict) -> dict:
    """What a histogram counted between two reads."""
    return {
        "buckets": {le: n - before["buckets"].get(le, 0.0) for le, n in after["buckets"].items()},
        "sum": after["sum"] - before["sum"],
        "count": after["count"] - before["count"],
    }


def quantile(h: dict, q: float) -> float | None:
    """Prometheus' histogram_quantile: linear inside the bucket that holds rank q * count (the last finite
    bound if it lands in +Inf); None when nothing was counted."""
    if h["count"] <= 0:
        return None
    rank, lower, below = q * h["count"], 0.0, 0.0
    for le, n in h["buckets"].items():
        if n >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * (rank - below) / max(n - below, 1e-12)
        lower, below = le, n
    return lower


def give_up(url: str, body: dict, after: float) -> None:
    """One request on its own connection, closed `after` seconds later whatever came back."""
    u = urlsplit(url)
    data = json.dumps(body).encode()
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(openloop.http_post(u.netloc, "/v1/generate", data))
        time.sleep(after)


def run(a) -> dict:
    flags = ["--threads", "1", "--log-level", "warning"]
    server = start_module("server", a.model, a.engine, "/readyz", *flags)
    body = {"num_samples": a.samples, "steps": a.steps, "output": "npy"}
    rng = np.random.default_rng(a.seed)
    try:
        metrics = lambda: httpx.get(server.url + "/metrics", timeout=10).text
        read = lambda text: {
            "free": histogram(text, "flowmap_cancel_free_seconds", a.model),
            "call": histogram(text, "flowmap_engine_call_seconds", a.model),
        }
        before = read(metrics())
        load: dict = {}

        def background() -> None:
            try:
                load.update(overload.phase(server.url, body, a.rate, a.seconds, seed=a.seed))
            except Exception as e:  # re-raised below: a failed load must not print as a result
                load["error"] = e

        bg = threading.Thread(target=background)
        bg.start()
        sent, start = 0, time.monotonic()
        while (at := start + sent * a.every) < start + a.seconds:  # one every `every` s, start to start
            time.sleep(max(0.0, at - time.monotonic()))
            give_up(server.url, body, float(rng.uniform(*a.after)))
            sent += 1
        bg.join()
        if "error" in load:
            raise RuntimeError(f"the background load failed: {load['error']!r}") from load["error"]
        time.sleep(1.0)  # the core records an iteration's metrics between steps, or every 50 ms
        after = read(metrics())
    finally:
        server.stop()
    free, call = delta(after["free"], before["free"]), delta(after["call"], before["call"])
    ms = lambda v: None if v is None else round(1e3 * v, 1)
    return {
        "body": body,
        "rate": a.rate,
        "load": {k: load.get(k) for k in ("sent", "statuses", "ok_p50_ms", "ok_p99_ms", "mean_batch")},
        "given_up": sent,
        "freed": int(free["count"]),
        "free_ms": {
            "mean": ms(free["sum"] / free["count"]) if free["count"] else None,
            **{f"p{q}": ms(quantile(free, q / 100)) for q in (50, 90, 99)},
        },
        "call_ms": {
            "mean": ms(call["sum"] / call["count"]) if call["count"] else None,
            **{f"p{q}": ms(quantile(call, q / 100)) for q in (50, 99)},
        },
    }


def report(r: dict) -> str:
    f, c, load = r["free_ms"], r["call_ms"], r["load"]
    ratio = lambda x, y: f"{x / y:.2f}x" if x is not None and y else "n/a"
    return "\n".join(
        [
            f"background: {r['rate']} req/s of {json.dumps(r['body'])}, open loop: {load['sent']} sent, "
            f"statuses {load['statuses']}, 200 p50 / p99 {load['ok_p50_ms']} / {load['ok_p99_ms']} ms, "
            f"{load['mean_batch']} samples per call",
            f"clients that gave up mid-request: {r['given_up']}; cancels with rows in flight timed by the "
            f"core: {r['freed']}",
            "",
            "| | mean ms | p50 ms | p90 ms | p99 ms |",
            "|---|---:|---:|---:|---:|",
            f"| cancel -> rows dropped | {f['mean']} | {f['p50']} | {f['p90']} | {f['p99']} |",
            f"| engine call (one step) | {c['mean']} | {c['p50']} | | {c['p99']} |",
            "",
            f"p99 time to free / p99 step: {ratio(f['p99'], c['p99'])}; mean / mean step: "
            f"{ratio(f['mean'], c['mean'])} (quantiles interpolated inside the histograms' buckets)",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.cancel", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mnist")
    p.add_argument("--engine", default="onnxruntime")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rate", type=float, default=6.0, help="background req/s (mnist 8x4: ~8 is capacity)")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--every", type=float, default=0.4, help="seconds from one quitter to the next")
    p.add_argument("--after", type=float, nargs=2, default=(0.05, 0.25), metavar=("LO", "HI"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    if not 0 < a.after[0] <= a.after[1] <= a.every or a.rate <= 0 or a.seconds <= 0:
        p.error("--after LO HI needs 0 < LO <= HI <= --every; --rate and --seconds must be > 0")
    r = run(a)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2)
    print(report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
