"""Peers under open-loop load with an SLO: flowmap vs LitServe vs Ray Serve vs the naive endpoint.

    python -m loadtests.peers_slo [--steps 1,2,4] [--rates 50,100,200,300,400] [--seconds 4] \
        [--slo-ms 100] [--servers flowmap,litserve-8,litserve-32,ray,naive] [--repeat 1] [--json FILE]
    python -m loadtests.peers_slo --merge A.json B.json   # one table over runs made at different times

The sweep's workloads (loadtests/mixes/sweep.toml: 8-sample requests at fixed steps), as PNG (what every
peer answers) with the server's own class cycling. Each server is started alone (one at a time, the
same engine, one torch thread per process) and driven by loadtests.openloop at each offered rate.
Goodput at the p99 SLO = the highest goodput (requests/s answered 200 within the SLO) over the rates at
which the server's p99 stayed within the SLO; printed per workload with ratios to flowmap. Peers:
loadtests.litserve_peer (max batch 8 and 32; the better is "LitServe"), loadtests.ray_peer
(`@serve.batch`, max batch 32) and loadtests.baselines' /naive. A peer whose package is missing
(`pip install -e ".[bench]"`) or that fails to start is skipped with the reason.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

from loadtests import openloop
from loadtests.mix import Mix, load_mix
from loadtests.procs import Proc, free_port, start_baselines

SERVERS = ("flowmap", "litserve-8", "litserve-32", "ray", "naive")
NEEDS = {"litserve-8": "litserve", "litserve-32": "litserve", "ray": "ray"}


def start(server: str, a) -> tuple[Proc, str]:
    """One server process and the URL to POST to."""
    py, port = sys.executable, free_port()
    if server == "flowmap":
        from loadtests.sweep import start_server

        p = start_server(a.model, f"--engine {a.engine}")
        return p, p.url + "/v1/generate"
    if server == "naive":
        p = start_baselines(a.model, a.engine)
        return p, p.url + "/naive"
    if server == "ray":
        cmd = [py, "-m", "loadtests.ray_peer", "--model", a.model, "--engine", a.engine, "--port", str(port)]
        p = Proc(
            cmd + ["--max-batch-size", "32", "--batch-timeout", str(a.batch_timeout)], port, "/-/healthz"
        )
        return p, p.url + "/v1/generate"
    cmd = [py, "-m", "loadtests.litserve_peer", "--model", a.model, "--engine", a.engine, "--port", str(port)]
    cmd += ["--max-batch-size", server.split("-")[1], "--batch-timeout", str(a.batch_timeout)]
    p = Proc(cmd, port, "/health")
    return p, p.url + "/v1/generate"


def stop(p: Proc) -> None:
    """Stop the process group, then anything left in its session (Ray's actors make their own groups)."""
    sid = p.p.pid
    p.stop()
    end = time.monotonic() + 10
    while (left := session_members(sid)) and time.monotonic() < end:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def session_members(sid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # after the command: state ppid pgrp session ...
            out.append(int(d.name))
    return out


def workload(mix: Mix, steps: int) -> Mix:
    """The sweep's mix at `steps`, as PNG with the server's class cycling (what every peer accepts)."""
    return Mix(
        f"{mix.name}@{steps}",
        tuple(replace(e, steps=steps, output="png", classes="server") for e in mix.entries),
    )


def curve(url: str, mix: Mix, rates: list[float], a, seed: int) -> list[dict]:
    rows = []
    for i, rate in enumerate(rates):
        plan = openloop.plan_mix(mix, rate, a.warmup + a.seconds, seed + i, 0, url)
        s = openloop.summarize(openloop.drive(url, plan), a.warmup)
        s["rate"] = rate
        rows.append(s)
        if s["attainment"] < 0.05:  # far past its knee: higher rates only cost time
            break
    return rows


def warm(url: str, mix: Mix, rate: float, a) -> None:
    """Uncounted load first, for every server alike (Ray Serve's first seconds after readiness are slow)."""
    for _ in range(3):
        s = openloop.summarize(openloop.drive(url, openloop.plan_mix(mix, rate, 2.0, 99, 0, url), drain_s=20))
        if s["p50_ms"] < a.slo_ms:
            return


def goodput_at_p99(rows: list[dict], slo_ms: float) -> float:
    """The highest goodput over the rates at which p99 <= SLO (0 when none)."""
    return max((r["goodput_rps"] for r in rows if r["p99_ms"] <= slo_ms), default=0.0)


def measure(server: str, a, mix: Mix, steps: list[int], rates: list[float], rep: int) -> dict:
    try:
        proc, url = start(server, a)
    except RuntimeError as e:
        print(f"  {server}: failed to start: {str(e)[-300:]}", file=sys.stderr)
        return {"error": str(e)[-500:]}
    out = {}
    try:
        warm(url, workload(mix, steps[0]), rates[0], a)
        for k in steps:
            rows = curve(url, workload(mix, k), rates, a, seed=10_000 * rep + 100 * k)
            out[str(k)] = {"curve": rows, "goodput_at_p99": goodput_at_p99(rows, a.slo_ms)}
            print(
                f"  {server:12s} steps={k}: goodput at p99 <= {a.slo_ms:g} ms: "
                f"{out[str(k)]['goodput_at_p99']:.0f} req/s",
                file=sys.stderr,
                flush=True,
            )
    finally:
        stop(proc)
    return out


def servers_for(a) -> list[str]:
    wanted = [s.strip() for s in a.servers.split(",") if s.strip()]
    bad = [s for s in wanted if s not in SERVERS]
    if bad:
        raise SystemExit(f"unknown server(s) {bad}; choose from {list(SERVERS)}")
    for s in list(wanted):
        if s in NEEDS and importlib.util.find_spec(NEEDS[s]) is None:
            print(f"{NEEDS[s]} not installed (pip install -e '.[bench]'): skipping {s}", file=sys.stderr)
            wanted.remove(s)
    return wanted


def best_litserve(rep: dict, k: str) -> float | None:
    got = [rep[s][k]["goodput_at_p99"] for s in ("litserve-8", "litserve-32") if k in rep.get(s, {})]
    return max(got) if got else None


def table(runs: list[dict], steps: list[int], slo_ms: float) -> str:
    from loadtests.peer_table import span

    cols = [
        ("flowmap", lambda r, k: r.get("flowmap", {}).get(k, {}).get("goodput_at_p99")),
        ("LitServe (best of b8, b32)", best_litserve),
        ("Ray Serve", lambda r, k: r.get("ray", {}).get(k, {}).get("goodput_at_p99")),
        ("naive", lambda r, k: r.get("naive", {}).get(k, {}).get("goodput_at_p99")),
    ]
    L = [
        f"Goodput (req/s) at p99 <= {slo_ms:g} ms, and ratio to flowmap (min–max over repeats):",
        "",
        "| workload | "
        + " | ".join(c for c, _ in cols)
        + " | "
        + " | ".join(f"{c} / flowmap" for c, _ in cols[1:])
        + " |",
        "|---|" + "---:|" * (2 * len(cols) - 1),
    ]
    for k in map(str, steps):
        vals = [[f(r, k) for r in runs] for _, f in cols]
        ratios = [
            [v / f if v is not None and f else None for v, f in zip(col, vals[0], strict=True)]
            for col in vals[1:]
        ]
        L.append(
            f"| 8 samples, {k} steps | "
            + " | ".join(span(v, ".0f") for v in vals)
            + " | "
            + " | ".join(span(r, ".2f") for r in ratios)
            + " |"
        )
    return "\n".join(L)


def parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="digits")
    p.add_argument("--engine", default="onnxruntime")
    p.add_argument("--mix", default="sweep")
    p.add_argument("--steps", default="1,2,4")
    p.add_argument("--rates", default="50,100,150,200,300,400")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--slo-ms", type=float, default=100.0, help="the p99 SLO")
    p.add_argument("--servers", default=",".join(SERVERS))
    p.add_argument("--batch-timeout", type=float, default=0.005, help="LitServe and Ray batch wait, s")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--json", default=None)
    p.add_argument("--merge", nargs="+", default=None, help="print the table of earlier --json files")
    return p.parse_args(argv)


def merged(paths: list[str]) -> int:
    """The table over the runs of several --json files (repeats run at different times)."""
    files = [json.loads(Path(p).read_text()) for p in paths]
    runs = [r for f in files for r in f["runs"]]
    steps = [int(v) for v in files[0]["args"]["steps"].split(",")]
    print(table(runs, steps, files[0]["args"]["slo_ms"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.merge:
        return merged(a.merge)
    mix, servers = load_mix(a.mix), servers_for(a)
    steps = [int(v) for v in a.steps.split(",") if v.strip()]
    rates = [float(v) for v in a.rates.split(",") if v.strip()]
    runs = []
    t0 = time.time()
    for rep in range(a.repeat):
        print(f"repeat {rep + 1}/{a.repeat}", file=sys.stderr, flush=True)
        runs.append({s: measure(s, a, mix, steps, rates, rep) for s in servers})
    text = table(runs, steps, a.slo_ms)
    print(
        f"{len(servers)} servers, steps {steps}, rates {rates} req/s, {a.seconds:g} s each, load average "
        f"now {' '.join(f'{v:.2f}' for v in os.getloadavg())}, {time.time() - t0:.0f} s in all\n\n{text}"
    )
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
