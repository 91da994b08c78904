"""Past capacity, in one command: `python -m loadtests.overload [--model mnist] [--samples 8] [--steps 4]`.

Starts the real server (one torch thread), measures its capacity closed loop (wrk when installed), then
drives it open loop (Poisson arrivals, loadtests.openloop) at 1x and at `--factor`x that capacity, and
at half of it from 3 s after the overload ends, while a separate process probes GET /healthz the way the
kubelet does (a fresh connection each time, 5 s timeout). Prints a markdown report (and --json FILE):

- accepted (200) p50/p99 at capacity and at overload, from each request's *scheduled* arrival;
- refusals: 429 count, their latency p50/p99/max, every other status (a 5xx is a failure of the goal);
- /healthz p50/p99/max and failures from the other process, over the whole run;
- recovery: p50/p99 and the share answered 200 at half capacity, 3 s after the overload.

Goals (issue 19): accepted p99 <= 1 s and <= 2x the p99 at capacity; every refusal a 429 or 503 with
Retry-After within 50 ms; /healthz p99 <= 50 ms with no failure; serving normally 3 s after the overload.
`python -m loadtests.overload --probe URL --seconds S` is the probing process (JSON on stdout).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import numpy as np

from loadtests import openloop, wrkload
from loadtests.procs import batch_stats, free_port, start_module

PROBE_EVERY = 0.05  # seconds between /healthz probes
PROBE_TIMEOUT = 5.0  # the deployment's livenessProbe timeoutSeconds
# the probe (answered on the connection) and, to see where the time goes, the same answer through the
# whole ASGI stack (FastAPI's v2 liveness route) in the same process
PORT_PROBE = "--health-port /healthz"  # GET /healthz on the server's probe port, answered by a thread
PROBED = ("/healthz", "/v2/health/live", PORT_PROBE)


def probe_once(host: str, port: int, path: str = "/healthz") -> float | None:
    """Seconds for one GET `path` on a fresh connection (None: failed or not 200 within the timeout)."""
    t0 = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT) as s:
            s.sendall(b"GET %s HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n" % path.encode())
            ok = s.recv(64).startswith(b"HTTP/1.1 200 ")
    except OSError:
        return None
    return time.perf_counter() - t0 if ok else None


def plan(url: str, body: dict, rate: float, seconds: float, seed: int) -> openloop.Plan:
    """Poisson arrivals of one request shape (a distinct seed each)."""
    rng = np.random.default_rng(seed)
    at = openloop.poisson_times(rate, seconds, rng)
    u = urlsplit(url)
    bodies = [{**body, "seed": seed * 1_000_000 + i} for i in range(len(at))]
    reqs = [openloop.http_post(u.netloc, "/v1/generate", json.dumps(b).encode()) for b in bodies]
    n = len(at)
    return openloop.Plan(at, reqs, np.zeros(n, int), np.full(n, np.inf), bodies)


def phase(url: str, body: dict, rate: float, seconds: float, seed: int) -> dict:
    """One open-loop run: accepted and refused latencies, statuses."""
    b0, started = batch_stats(url), time.monotonic()
    out = openloop.drive(url, plan(url, body, rate, seconds, seed), cap=1024, drain_s=30.0)
    (s1, n1), (s0, n0) = batch_stats(url), b0
    lat, status = out.latency_ms, out.status
    ok, refused = lat[status == 200], lat[status == 429]
    pct = lambda a, q: round(float(np.percentile(a, q)), 1) if len(a) else None
    codes, counts = np.unique(status, return_counts=True)
    return {
        "rate": round(rate, 1),
        "sent": int(len(status)),
        "statuses": {str(int(c)): int(k) for c, k in zip(codes, counts, strict=True)},
        "ok_p50_ms": pct(ok, 50),
        "ok_p99_ms": pct(ok, 99),
        "refused_p50_ms": pct(refused, 50),
        "refused_p99_ms": pct(refused, 99),
        "refused_max_ms": round(float(refused.max()), 1) if len(refused) else None,
        "ok_share": round(float((status == 200).mean()), 4) if len(status) else None,
        "ok_per_s": round(float((status == 200).sum()) / seconds, 1),
        "mean_batch": round((s1 - s0) / (n1 - n0), 1) if n1 > n0 else None,  # samples per network call
        "lag_p99_ms": pct((out.sent - out.plan.at)[np.isfinite(out.sent)] * 1e3, 99),  # generator behind
        "started": started,
        "ended": time.monotonic(),
    }


def run(a) -> dict:
    flags = ["--threads", "1", "--log-level", "warning", "--max-steps", "4", "--max-batch-size", "128"]
    flags += ["--max-queue-ms", str(a.max_queue_ms)] if a.max_queue_ms else []
    health_port = free_port()
    flags += ["--health-port", str(health_port)]
    server = start_module("server", a.model, a.engine, "/readyz", *flags)
    body = {"num_samples": a.samples, "steps": a.steps, "output": "npy"}
    try:
        cap = wrkload.run(server.port, "/v1/generate", [body], a.connections, a.seconds, warmup=1.0)
        rate = cap.req_s
        prober = subprocess.Popen(
            [sys.executable, "-m", __spec__.name, "--probe", server.url, "--seconds", "1e9"]
            + ["--probe-port", str(health_port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            r = {"at_capacity": phase(server.url, body, rate, a.seconds, seed=1)}
            r["overload"] = phase(server.url, body, a.factor * rate, a.seconds, seed=2)
            time.sleep(max(0.0, r["overload"]["ended"] + 3.0 - time.monotonic()))
            r["after"] = phase(server.url, body, 0.5 * rate, 3.0, seed=3)
            r["api_flood"] = api_flood(server.port, a.seconds)
        finally:
            prober.terminate()  # SIGTERM: the prober prints what it has (_probe_main)
            text = prober.communicate(timeout=30)[0]
    finally:
        server.stop()
    probes = json.loads(text)
    r["healthz"] = {
        name: {path: probe_stats(probes[path], r[name]["started"], r[name]["ended"]) for path in PROBED}
        for name in ("at_capacity", "overload", "after", "api_flood")
    }
    closed = {"req_s": round(rate, 1), "p50_ms": cap.p50_ms, "p99_ms": cap.p99_ms, "generator": cap.generator}
    r["capacity"] = closed | {"connections": a.connections, "not_2xx": cap.requests - cap.ok}
    return {"body": body, "max_queue_ms": a.max_queue_ms, "factor": a.factor} | r


def api_flood(port: int, seconds: float) -> dict:
    """The API process's own overload (issue 19's /healthz starvation): 256 connections of 1-sample 1-step
    PNG requests, closed loop, so decoding, encoding and the ASGI stack keep its event loop busy."""
    started = time.monotonic()
    load = wrkload.run(port, "/v1/generate", [{"num_samples": 1, "steps": 1}], 256, seconds)
    return {"started": started, "ended": time.monotonic(), "req_s": round(load.req_s, 1)} | {
        "p50_ms": load.p50_ms,
        "p99_ms": load.p99_ms,
        "errors": load.errors,
    }


def probe_stats(samples: list, start: float, end: float) -> dict:
    """p50/p99/max ms and failures of the probes sent in [start, end]."""
    got = [ms for when, ms in samples if start <= when <= end]
    ok = np.array([ms for ms in got if ms is not None] or [np.nan])
    pct = lambda q: round(float(np.percentile(ok, q)), 2)
    return {
        "probes": len(got),
        "failed": sum(ms is None for ms in got),
        "p50_ms": pct(50),
        "p99_ms": pct(99),
    } | {"max_ms": round(float(ok.max()), 2)}


def report(r: dict) -> str:
    c, one, over, after, fl = r["capacity"], r["at_capacity"], r["overload"], r["after"], r["api_flood"]
    row = lambda name, p: (
        f"| {name} | {p['rate']} | {p['sent']} | {p['ok_p50_ms']} | {p['ok_p99_ms']} | "
        f"{p['statuses'].get('429', 0)} | {p['refused_p50_ms']} / {p['refused_p99_ms']} / "
        f"{p['refused_max_ms']} | {p['ok_per_s']} | {p['mean_batch']} | {p['lag_p99_ms']} | {p['statuses']} |"
    )
    probe = lambda s: f"{s['p50_ms']} / {s['p99_ms']} / {s['max_ms']} ({s['failed']} of {s['probes']})"
    health = [
        f"| {name} | {probe(h['/healthz'])} | {probe(h['/v2/health/live'])} | {probe(h[PORT_PROBE])} |"
        for name, h in r["healthz"].items()
    ]
    return "\n".join(
        [
            f"request {json.dumps(r['body'])}; capacity (closed loop, {c['connections']} connections, "
            f"{c['generator']}): {c['req_s']} req/s of 200s, p50 {c['p50_ms']:.1f} ms, "
            f"p99 {c['p99_ms']:.1f} ms ({c['not_2xx']} not 2xx)",
            "",
            "| phase (open loop) | req/s offered | sent | 200 p50 ms | 200 p99 ms | 429s "
            "| 429 p50 / p99 / max ms | 200/s | samples per call | generator lag p99 ms | statuses |",
            "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|",
            row("1x capacity", one),
            row(f"{r['factor']:g}x capacity", over),
            row("0.5x, 3 s after", after),
            "",
            f"API flood (256 connections, 1x1 PNG, closed loop): {fl['req_s']} req/s, "
            f"p50 {fl['p50_ms']:.1f} ms, p99 {fl['p99_ms']:.1f} ms, errors {fl['errors']}",
            "",
            "Probes from another process, a fresh connection each, p50 / p99 / max ms (failed of sent):",
            "",
            "| phase | GET /healthz (answered on the connection) | GET /v2/health/live (through FastAPI) "
            "| GET /healthz on --health-port (a thread) |",
            "|---|---|---|---|",
            *health,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.overload")
    p.add_argument("--model", default="mnist")
    p.add_argument("--engine", default="onnxruntime")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--connections", type=int, default=8, help="closed loop that measures the capacity")
    p.add_argument("--seconds", type=float, default=8.0, help="length of each phase")
    p.add_argument("--factor", type=float, default=4.0, help="overload: this many times the capacity")
    p.add_argument("--max-queue-ms", type=float, help="the server's --max-queue-ms (default: its own)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--probe", metavar="URL", help=argparse.SUPPRESS)
    p.add_argument("--probe-port", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.probe:
        return _probe_main(a.probe, a.seconds, a.probe_port)
    r = run(a)
    print(report(r))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1)
    return 0


def _probe_main(url: str, seconds: float, probe_port: int | None) -> int:
    """Probe until `seconds` pass or SIGTERM arrives; then print the results as JSON."""
    import signal

    out = {path: [] for path in PROBED}  # path -> [(when, ms or None: failed)]
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    u, end = urlsplit(url), time.monotonic() + seconds
    while not stop and time.monotonic() < end:
        for path in PROBED:
            port, target = (probe_port, "/healthz") if path == PORT_PROBE else (u.port, path)
            when, t = time.monotonic(), probe_once(u.hostname, port, target)
            out[path].append((when, None if t is None else 1e3 * t))
        time.sleep(PROBE_EVERY)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
