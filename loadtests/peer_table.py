"""The peer table of issue 8: `python -m loadtests.bench_server --peers [--seconds 8] [--repeat 2]`.

Workloads (a) 1 sample 1 step, (b) 8 samples 2 steps, (c) 1 sample 4 steps, (d) mixed 1-4 steps
1 sample, (e) mixed 1-4 steps 8 samples. Servers, each alone and started fresh for every case: flowmap
with its default flags (`flowmap serve --model M --engine E --port P`), the LitServe peer
(loadtests.litserve_peer) at max_batch_size 8 and 32 (the better one is "LitServe"), and the naive
endpoint (loadtests.baselines). Load: wrk, one thread, 32 connections for `--seconds` (after a 1 s
warm-up: throughput and p99), then 1 connection for `--p50-seconds` (p50 at low load). Before each
workload's servers the bare engine is timed (loadtests.bare_engine: a fresh process, one thread, every
batch size the server builds; this box's speed drifts by 10-20% over minutes, so a timing taken once per
run would not do): each server's share of its best rows per second is printed next to its throughput.
Prints two markdown tables with the goals' ratios; --json FILE keeps the raw numbers. Default run: ~9
minutes on digits, ~20 on mnist.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import random
import shlex
import subprocess
import sys
import time
from datetime import date

from loadtests import wrkload
from loadtests.procs import Proc, batch_stats, free_port, start_baselines

WORKLOADS = {  # key: (label, samples per request, steps or None for mixed 1-4)
    "a": ("1 sample, 1 step", 1, 1),
    "b": ("8 samples, 2 steps", 8, 2),
    "c": ("1 sample, 4 steps", 1, 4),
    "d": ("mixed 1-4 steps, 1 sample", 1, None),
    "e": ("mixed 1-4 steps, 8 samples", 8, None),
}
SERVERS = ("flowmap", "litserve-8", "litserve-32", "naive")
LITSERVE = ("litserve-8", "litserve-32")


def bodies(key: str, count: int = 64) -> list[dict]:
    """The request bodies wrk cycles through: seeds 0..count-1; mixed steps exactly uniform over 1..4."""
    _, n, steps = WORKLOADS[key]
    if steps is None:
        mix = [1 + i % 4 for i in range(count)]
        random.Random(0).shuffle(mix)
    else:
        mix = [steps] * count
    return [{"steps": k, "num_samples": n, "seed": i} for i, k in enumerate(mix)]


def row_steps(key: str) -> float:
    """Network rows x steps per request of a workload, on average over its bodies (mixed: 2.5 steps)."""
    b = bodies(key)
    return sum(x["num_samples"] * x["steps"] for x in b) / len(b)


def bare_engine(a, seconds: float = 1.0) -> dict:
    """The bare engine's best rows per second over the batch sizes the server builds at its default
    max_batch_size (1-128), timed now in a fresh process (loadtests.bare_engine: that engine alone, one
    thread, `seconds` per size): {"rows_s", "batch", "by_batch"}, or {"error"} when it failed (the share
    columns then read n/a)."""
    cmd = [sys.executable, "-m", "loadtests.bare_engine", "--model", a.model, "--engine", a.engine]
    try:
        p = subprocess.run([*cmd, "--seconds", str(seconds)], capture_output=True, text=True, timeout=900)
        rates = {int(b): float(r) for b, r in json.loads(p.stdout.strip().splitlines()[-1]).items()}
        batch = max(rates, key=rates.get)
    except (ValueError, IndexError, AttributeError, TypeError, subprocess.TimeoutExpired) as e:
        out = "" if isinstance(e, subprocess.TimeoutExpired) else (p.stderr or p.stdout).strip()
        why = out.splitlines()[-1][-300:] if out else f"{type(e).__name__}: {e}"
        print(f"  bare engine failed: {why}", file=sys.stderr)
        return {"error": why}
    print(
        f"  bare engine {a.engine}: best {rates[batch]:.0f} rows/s at {batch} rows",
        file=sys.stderr,
        flush=True,
    )
    return {"rows_s": rates[batch], "batch": batch, "by_batch": rates}


def start(server: str, a) -> tuple[Proc, str]:
    """Start one server process; (process, POST path)."""
    py, port = sys.executable, free_port()
    if server == "naive":
        return start_baselines(a.model, a.engine), "/naive"
    if server == "flowmap":
        cmd = [py, "-m", "flowmap", "serve", "--model", a.model, "--engine", a.engine, "--port", str(port)]
        return Proc(cmd + shlex.split(a.flowmap_args), port, "/readyz"), "/v1/generate"
    batch = server.split("-")[1]
    cmd = [py, "-m", "loadtests.litserve_peer", "--model", a.model, "--engine", a.engine, "--port", str(port)]
    cmd += ["--max-batch-size", batch, "--batch-timeout", str(a.batch_timeout)]
    return Proc(cmd, port, "/health"), "/v1/generate"


def measure(server: str, key: str, a) -> dict:
    """One case: a fresh server, warm-up, 32 connections, then 1 connection; the server is stopped after."""
    try:
        proc, path = start(server, a)
    except RuntimeError as e:
        print(f"  {server}: failed to start: {e}", file=sys.stderr)
        return {"error": str(e)[-500:]}
    try:
        b = bodies(key)
        wrkload.run(proc.port, path, b, 32, 1.0, generator=a.generator)  # warm-up, not recorded
        rows0, t0 = served_rows(server, proc), time.monotonic()
        hi = wrkload.run(proc.port, path, b, 32, a.seconds, generator=a.generator)
        rows1, t1 = served_rows(server, proc), time.monotonic()
        lo = wrkload.run(proc.port, path, b, 1, a.p50_seconds, generator=a.generator)
    finally:
        proc.stop()
    print(
        f"  {key} {server:12s} c32 {hi.req_s:7.0f} req/s p50 {hi.p50_ms:6.2f} p99 {hi.p99_ms:7.2f} ms | "
        f"c1 p50 {lo.p50_ms:6.2f} ms{'  errors ' + str(hi.errors) if hi.errors else ''}",
        file=sys.stderr,
        flush=True,
    )
    c32 = hi.as_dict()
    if rows0 is not None and rows1 is not None:
        c32["row_steps_s"] = (rows1 - rows0) / (t1 - t0)
    return {"c32": c32, "c1": lo.as_dict()}


def served_rows(server: str, proc: Proc) -> float | None:
    """The network rows flowmap has run so far (its flowmap_batch_samples sum); None for the peers."""
    return batch_stats(proc.url)[0] if server == "flowmap" else None


def ceiling(a) -> dict:
    """The generators against the trivial endpoint (a canned response of the real size, same validation):
    what the HTTP path and the load generator allow, far above any real case if the bench is sound."""
    proc = start_baselines(a.model, a.engine)
    out = {}
    try:
        for key in ("a", "b"):
            for gen in dict.fromkeys((a.generator, "httpload")):
                r = wrkload.run(proc.port, "/trivial", bodies(key), 32, min(a.seconds, 3), 0.5, gen)
                out[f"{key}/{gen}"] = r.as_dict()
    finally:
        proc.stop()
    return out


# ---- report ----------------------------------------------------------------------------------


def span(values: list[float], spec: str = ".0f", suffix: str = "") -> str:
    """'x' or 'min–max' over repeats; 'n/a' when nothing was measured."""
    v = [x for x in values if x is not None and x == x]
    if not v:
        return "n/a"
    lo, hi = format(min(v), spec), format(max(v), spec)
    return f"{lo}{suffix}" if lo == hi else f"{lo}–{hi}{suffix}"


def get(rep: dict, server: str, conc: str, field: str) -> float | None:
    """A measured number, or None where the server, the phase or the number (row_steps_s: flowmap's) is
    missing."""
    return ((rep.get(server) or {}).get(conc) or {}).get(field)


def best_litserve(rep: dict) -> str | None:
    """The LitServe batch setting with the higher throughput at 32 connections."""
    got = [s for s in LITSERVE if get(rep, s, "c32", "req_s") is not None]
    return max(got, key=lambda s: get(rep, s, "c32", "req_s")) if got else None


def ratio(x: float | None, y: float | None) -> float | None:
    return x / y if x is not None and y else None


def share(rep: dict, server: str | None, key: str | None) -> float | None:
    """server's network rows x steps per second as a share of the bare engine's best rows/s, timed right
    before this workload's servers (rep["bare"]). Rows the server counted itself where it did (flowmap's
    /metrics: its refusals fall more on 4-step requests, so the 2xx answers of a mix average fewer steps
    than the bodies), else 2xx req/s x the workload's rows x steps (the peers refuse nothing)."""
    bare = rep.get("bare") or {}
    if server is None or key is None or "rows_s" not in bare:
        return None
    served = get(rep, server, "c32", "row_steps_s")
    if served is not None:
        return served / bare["rows_s"]
    rps = get(rep, server, "c32", "req_s")
    return None if rps is None else rps * row_steps(key) / bare["rows_s"]


def derived(rep: dict, key: str | None = None) -> dict:
    """Per repeat and workload: the best LitServe and the goal ratios (the shares of the bare engine need
    the workload's key)."""
    best = best_litserve(rep)
    low = [s for s in LITSERVE if get(rep, s, "c1", "p50_ms") is not None]
    return {
        "best": best,
        "ls_req_s": get(rep, best, "c32", "req_s"),
        "ls_p50": get(rep, best, "c32", "p50_ms"),
        "ls_p99": get(rep, best, "c32", "p99_ms"),
        "ls_c1_p50": min(get(rep, s, "c1", "p50_ms") for s in low) if low else None,
        "vs_ls": ratio(get(rep, "flowmap", "c32", "req_s"), get(rep, best, "c32", "req_s")),
        "p99_vs_ls": ratio(get(rep, "flowmap", "c32", "p99_ms"), get(rep, best, "c32", "p99_ms")),
        "vs_naive": ratio(get(rep, "flowmap", "c32", "req_s"), get(rep, "naive", "c32", "req_s")),
        "p50_vs_naive": ratio(get(rep, "flowmap", "c1", "p50_ms"), get(rep, "naive", "c1", "p50_ms")),
        "share": share(rep, "flowmap", key),
        "ls_share": share(rep, best, key),
    }


THROUGHPUT_COLUMNS = (
    "flowmap req/s",
    "p50 ms",
    "p99 ms",
    "LitServe b8 req/s",
    "LitServe b32 req/s",
    "LitServe best p50 ms",
    "p99 ms",
    "naive req/s",
    "p99 ms",
    "flowmap / LitServe",
    "flowmap / naive",
    "bare engine best rows/s",
    "flowmap share of bare engine",
    "LitServe's share",
)


def throughput_cells(reps: list[dict], key: str | None = None) -> list[str]:
    """One workload's row over its repeats."""
    ds = [derived(r, key) for r in reps]
    case = lambda s, f, spec=".0f": span([get(r, s, "c32", f) for r in reps], spec)
    dd = lambda f, spec, suffix="": span([d[f] for d in ds], spec, suffix)
    return [
        case("flowmap", "req_s"),
        case("flowmap", "p50_ms", ".2f"),
        case("flowmap", "p99_ms", ".1f"),
        case("litserve-8", "req_s"),
        case("litserve-32", "req_s"),
        dd("ls_p50", ".2f"),
        dd("ls_p99", ".1f"),
        case("naive", "req_s"),
        case("naive", "p99_ms", ".1f"),
        dd("vs_ls", ".2f", "x"),
        dd("vs_naive", ".2f", "x"),
        span([(r.get("bare") or {}).get("rows_s") for r in reps]),
        dd("share", ".0%"),
        dd("ls_share", ".0%"),
    ]


def throughput_table(runs: list[dict], keys: list[str]) -> list[str]:
    L = ["| workload | " + " | ".join(THROUGHPUT_COLUMNS) + " |", "|---|" + "---:|" * len(THROUGHPUT_COLUMNS)]
    for k in keys:
        cells = throughput_cells([r[k] for r in runs], k)
        L.append(f"| {WORKLOADS[k][0]} | " + " | ".join(cells) + " |")
    return L


def latency_table(runs: list[dict], keys: list[str]) -> list[str]:
    L = [
        "| workload | flowmap p50 ms | LitServe p50 ms (best) | naive p50 ms | flowmap / naive |",
        "|---|---:|---:|---:|---:|",
    ]
    for k in keys:
        reps = [r[k] for r in runs]
        ds = [derived(r) for r in reps]
        L.append(
            f"| {WORKLOADS[k][0]} | {span([get(r, 'flowmap', 'c1', 'p50_ms') for r in reps], '.2f')} "
            f"| {span([d['ls_c1_p50'] for d in ds], '.2f')} "
            f"| {span([get(r, 'naive', 'c1', 'p50_ms') for r in reps], '.2f')} "
            f"| {span([d['p50_vs_naive'] for d in ds], '.2f', 'x')} |"
        )
    return L


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "NOT met")


def worst(values: list[float | None], fn, limit: float) -> bool | None:
    """fn (min or max) of the values against the limit; None when any repeat lacks the number."""
    if not values or None in values:
        return None
    return fn(values) >= limit if fn is min else fn(values) <= limit


def goals(runs: list[dict], keys: list[str]) -> list[str]:
    """Issues 8, 19 and 21's goals, judged on the worst repeat."""
    L = ["Goals (worst repeat):"]
    for k in keys:
        ds = [derived(r[k], k) for r in runs]
        ratio_ok = worst([d["vs_ls"] for d in ds], min, 1.5)
        # p99 no higher than LitServe's best: flowmap p99 / LitServe p99 <= 1 in every repeat
        p99_ok = worst([d["p99_vs_ls"] for d in ds], max, 1.0)
        both = None if ratio_ok is None or p99_ok is None else ratio_ok and p99_ok
        p50_ok = worst([d["p50_vs_naive"] for d in ds], max, 1.15)
        L.append(f"- {WORKLOADS[k][0]}: >= 1.5x LitServe at equal or lower p99: {verdict(both)}")
        L.append(f"- {WORKLOADS[k][0]}: 1-connection p50 within 1.15x naive: {verdict(p50_ok)}")
        share_ok = worst([d["share"] for d in ds], min, 0.9)
        L.append(f"- {WORKLOADS[k][0]}: keeps >= 90% of the bare engine: {verdict(share_ok)}")
    if "c" in keys:
        ok = worst([derived(r["c"])["vs_naive"] for r in runs], min, 3.0)
        L.append(f"- 1 sample, 4 steps: >= 3x naive throughput: {verdict(ok)}")
    return L


def header(a, ceil: dict) -> list[str]:
    gen = "wrk 1 thread" if a.generator == "wrk" else "Python httpload (wrk missing)"
    L = [
        f"Machine: {platform.machine()} {os.cpu_count()} vCPU, Python {platform.python_version()}; "
        f"model {a.model}, engine {a.engine}; 1 torch thread per process; load: {gen}, "
        f"32 connections x {a.seconds:g} s "
        f"(after 1 s warm-up), then 1 connection x {a.p50_seconds:g} s; every server started fresh per case; "
        f"{a.repeat} repeat(s) (ranges are min–max). LitServe {version('litserve')}, batch timeout "
        f"{a.batch_timeout * 1e3:g} ms. Date: {date.today()}.",
        "",
        "Load-generator ceiling against the trivial endpoint (same validation, canned response of the real "
        "size; 32 connections; `a`/`b`: workload bodies; then generator):",
    ]
    L += [f"- {k}: {v['req_s']:.0f} req/s (p99 {v['p99_ms']:.1f} ms)" for k, v in ceil.items()]
    return L


def version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    try:
        return v(pkg)
    except PackageNotFoundError:
        return "not installed"


def wrk_version() -> str | None:
    if not wrkload.have_wrk():
        return None
    p = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return (p.stdout or p.stderr).splitlines()[0].strip()


def report(a, runs: list[dict], ceil: dict) -> str:
    keys = list(runs[0])
    L = header(a, ceil)
    L += ["", "### Throughput and tail at 32 connections", "", *throughput_table(runs, keys)]
    L += ["", "### Latency at low load (1 connection)", "", *latency_table(runs, keys), ""]
    return "\n".join(L + goals(runs, keys))


def servers_for(a) -> list[str]:
    wanted = [s.strip() for s in a.servers.split(",") if s.strip()]
    bad = [s for s in wanted if s not in SERVERS]
    if bad:
        raise SystemExit(f"unknown server(s) {bad}; choose from {list(SERVERS)}")
    if importlib.util.find_spec("litserve") is None and any(s in LITSERVE for s in wanted):
        print(
            "litserve not installed (pip install -e '.[bench]'): skipping the LitServe peer", file=sys.stderr
        )
        wanted = [s for s in wanted if s not in LITSERVE]
    return wanted


def run(a) -> int:
    """Entry from bench_server --peers (a: its parsed arguments)."""
    a.generator = wrkload.pick_generator(a.generator)
    keys = [k.strip() for k in a.workloads.split(",") if k.strip()]
    if any(k not in WORKLOADS for k in keys):
        raise SystemExit(f"unknown workload in {keys}; choose from {list(WORKLOADS)}")
    servers = servers_for(a)
    ceil = ceiling(a)
    runs = []
    for rep in range(a.repeat):
        print(f"repeat {rep + 1}/{a.repeat}", file=sys.stderr, flush=True)
        runs.append({k: {"bare": bare_engine(a), **{s: measure(s, k, a) for s in servers}} for k in keys})
    print(report(a, runs, ceil))
    if a.json:
        meta = {k: v for k, v in vars(a).items() if isinstance(v, (str, int, float, bool, type(None)))}
        raw = {
            "meta": {
                **meta,
                "litserve": version("litserve"),
                "wrk": wrk_version(),
                "date": str(date.today()),
            },
            "workloads": {k: WORKLOADS[k][0] for k in keys},
            "ceiling": ceil,
            "runs": runs,
            "derived": [{k: derived(r[k], k) for k in keys} for r in runs],
        }
        with open(a.json, "w") as f:
            json.dump(raw, f, indent=1)
    return 0
