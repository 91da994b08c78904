"""Two flowmap servers that differ only in flags, loaded in turn: an A/B of a server flag on a noisy box.

Both servers stay up for the whole run and are loaded one at a time (wrk, closed loop), alternating
A, B, B, A, ... so drift in the machine's speed hits both alike; each round prints both and their ratio,
then the ranges. Each server's `flowmap_batch_cap_rows` is read after every round.

    python -m loadtests.ab --model digits --workload b --b-args "--batch-free-ms 0" --rounds 6 --seconds 5

Workloads are loadtests.peer_table's (a: 1x1, b: 8x2, c: 1x4, d: mixed 1-4 steps x1, e: mixed x8).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys

import httpx

from loadtests import wrkload
from loadtests.peer_table import WORKLOADS, bodies, span
from loadtests.procs import Proc, free_port

CAP = re.compile(r'^flowmap_batch_cap_rows\{[^}]*model="([^"]+)"[^}]*\}\s+(\S+)', re.M)


def start(model: str, flags: list[str]) -> Proc:
    port = free_port()
    cmd = [sys.executable, "-m", "server", "--model", model, "--port", str(port), *flags]
    return Proc(cmd, port, "/readyz")


def batch_cap(url: str, model: str) -> int | None:
    text = httpx.get(url + "/metrics", timeout=5).text
    caps = {m: float(v) for m, v in CAP.findall(text)}
    return int(caps[model]) if model in caps else None


def one_round(r: int, servers: dict[str, Proc], requests: list[dict], a: argparse.Namespace) -> dict:
    """Round r: each server loaded in turn (A first on even rounds); their loads and caps, one table row."""
    order = ("A", "B") if r % 2 == 0 else ("B", "A")
    res = {}
    for name in order:
        srv = servers[name]
        load = wrkload.run(srv.port, "/v1/generate", requests, a.connections, a.seconds)
        res[name] = {**load.as_dict(), "cap": batch_cap(srv.url, a.model)}
        if load.errors:  # non-2xx answers or socket errors: not what the ratio compares
            print(f"round {r + 1}, {name}: errors {load.errors}", file=sys.stderr)
    A, B = res["A"], res["B"]
    print(
        f"| {r + 1} | {A['req_s']:.0f} | {A['p99_ms']:.1f} | {A['cap']} | {B['req_s']:.0f} "
        f"| {B['p99_ms']:.1f} | {B['cap']} | {B['req_s'] / max(A['req_s'], 1e-9):.2f}x |",
        flush=True,
    )
    return res


def summary(rows: list[dict]) -> None:
    for name in ("A", "B"):
        rps, p99 = [r[name]["req_s"] for r in rows], [r[name]["p99_ms"] for r in rows]
        print(f"{name}: {span(rps)} req/s, p99 {span(p99, '.1f')} ms")
    print(f"B / A: {span([r['B']['req_s'] / max(r['A']['req_s'], 1e-9) for r in rows], '.2f')}x")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="digits")
    p.add_argument("--workload", default="b", choices=sorted(WORKLOADS))
    p.add_argument("--a-args", default="", help="flags of server A (default: none, the defaults)")
    p.add_argument("--b-args", default="", help="flags of server B")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--warm-seconds", type=float, default=3.0, help="unrecorded load on each before round 1")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.rounds < 1 or a.seconds <= 0 or a.connections < 1:
        p.error("--rounds, --seconds and --connections must be positive")
    servers: dict[str, Proc] = {}
    requests = bodies(a.workload)
    try:
        for name, flags in (("A", a.a_args), ("B", a.b_args)):
            servers[name] = start(a.model, shlex.split(flags))
        for srv in servers.values():
            wrkload.run(srv.port, "/v1/generate", requests, a.connections, a.warm_seconds)
        print(f"{a.model}, {WORKLOADS[a.workload][0]}, wrk -c{a.connections} {a.seconds:g} s per turn")
        print(f"A: {a.a_args or '(defaults)'}\nB: {a.b_args or '(defaults)'}")
        print("| round | A req/s | A p99 ms | A cap | B req/s | B p99 ms | B cap | B / A |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        rows = [one_round(r, servers, requests, a) for r in range(a.rounds)]
        summary(rows)
    finally:
        for name, srv in servers.items():
            changes = [ln for ln in srv.stderr_tail(1_000_000).splitlines() if "batches up to" in ln]
            print(f"{name}'s batch caps:" + "".join(f"\n  {ln}" for ln in changes))
            srv.stop()
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "rounds": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
