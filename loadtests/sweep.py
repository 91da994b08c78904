"""The sweep: step count against latency AND quality, under open-loop load.

    python -m loadtests.sweep --model digits [--server URL] [--rates 50,100,200 | --rates auto]
        [--steps 1,2,3,4,auto] [--seconds 6] [--fill] [--repeat 2] [--out runs/sweep] [--keep-samples]

For each step setting (fixed 1..4, and "auto" with deadline_ms = the SLO) at each offered load, it
drives the server open loop (loadtests.openloop: Poisson arrivals, the request mix of --mix with its
steps replaced, npy output, classes cycled and known), keeps the samples it received and scores them
with flowmap.quality.score_images (what `flowmap eval` calls) on the held-out split. It also runs
`flowmap eval` itself for --eval-seeds (the reference and the FD's seed noise) and reproduces some
requests with the library (batch invariance: server samples = library samples).

Without --server it starts `flowmap serve` (1 API worker, 1 torch thread, --max-steps 4) and stops it
after. `--rates auto` probes fixed-4-step capacity (closed loop) and offers 0.25x..3x of it. A point runs
--seconds; with --fill, long enough to return --per-class samples of every class (a mix with classes
"cycle"), so that its FD is at eval's sample count at every load (a point past capacity returns fewer).
Writes OUT/sweep.json, OUT/sweep.md and PNG plots; prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from loadtests import openloop, score, sweep_report
from loadtests.mix import load_mix

LADDER = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)  # x fixed-4-step capacity, for --rates auto


def start_server(model: str, extra: str):
    from loadtests.procs import Proc, free_port

    port = free_port()
    cmd = [sys.executable, "-m", "server", "--model", model, "--port", str(port), "--max-steps", "4"]
    cmd += ["--threads", "1", "--api-workers", "1", "--log-level", "warning", *shlex.split(extra)]
    return Proc(cmd, port, "/readyz")


def capacity(url: str, mix, steps: int = 4, seconds: float = 3.0) -> float:
    """Closed-loop req/s of the mix at fixed `steps` (32 connections): 4 steps is the scale of --rates auto;
    1 step bounds what "auto" can sustain at all."""
    from loadtests import wrkload

    port = int(url.rsplit(":", 1)[1])
    bodies = mix.with_steps(steps).bodies(list(range(len(mix.entries))) * 16, 0, 10)
    return wrkload.run(port, "/v1/generate", bodies, 32, seconds, warmup=1.0).req_s


def point_seconds(mix, rate: float, a) -> float:
    """Measured seconds of one point: --seconds; with --fill, long enough at `rate` for the returned
    samples to fill the scored pool (--per-class of every class; 25% spare for the arrivals' spread), at
    most --max-seconds. FD falls with the sample count, so only points scored on the same count compare
    across loads, and with eval."""
    if not a.fill:
        return a.seconds
    per_request = sum(e.weight * e.num_samples for e in mix.entries) / sum(e.weight for e in mix.entries)
    need = 1.25 * a.per_class * max(1, a.classes) / (rate * per_request)
    return min(max(a.seconds, need), a.max_seconds)


def cell(url: str, mix, steps, rate: float, a, seed: int) -> tuple[dict, list[dict]]:
    """One (steps, offered load) point: its summary and the responses kept after the warm-up."""
    seconds = point_seconds(mix, rate, a)
    plan = openloop.plan_mix(
        mix.with_steps(steps, a.auto_deadline_ms),
        rate,
        a.warmup + seconds,
        seed,
        a.classes,
        url + "/v1/generate",
    )
    out = openloop.drive(url, plan, keep=True)
    s = openloop.summarize(out, a.warmup)
    kept = [r for r in openloop.responses(out) if plan.at[r["i"]] >= a.warmup]
    chosen = np.bincount([r["steps"] for r in kept], minlength=5)[1:].tolist() if kept else [0] * 4
    s.update(steps=str(steps), rate=rate, seconds=seconds, chosen_steps=chosen, load=uptime())
    print(
        f"  steps={steps!s:4} offered {s['offered_rps']:7.1f}/s attain {s['attainment']:.3f} goodput "
        f"{s['goodput_rps']:7.1f}/s p50 {s['p50_ms']:7.1f} p99 {s['p99_ms']:7.1f} ms chosen {chosen} "
        f"lag p99 {s['lag_p99_ms']:.1f} ms {s['statuses']} | load {s['load']}",
        file=sys.stderr,
        flush=True,
    )
    return s, kept


def uptime() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def scored(kept: list[dict], per_class: int) -> dict | None:
    s = score.pool(kept, per_class)
    if len(s["labels"]) < 20:
        return None
    q = score.quality(s["x"], s["labels"])
    q["mean_steps"] = float(s["steps"].mean())
    return q


def invariance(model, kept: list[dict], n: int = 16) -> float | None:
    """Max |server - library| over the first n kept requests of a cell (None: nothing kept)."""
    recs = kept[:n]
    if not recs:
        return None
    lib = score.library_samples(model, recs)
    return max(float(np.abs(x - r["x"]).max()) for x, r in zip(lib, recs, strict=True))


def run_repeat(url: str, mix, rates: list[float], settings: list, a, rep: int, model) -> list[dict]:
    rows = []
    for si, steps in enumerate(settings):
        for ri, rate in enumerate(rates):
            s, kept = cell(url, mix, steps, rate, a, seed=1000 * rep + 100 * si + ri)
            s["repeat"] = rep
            s["quality"] = scored(kept, a.per_class)
            s["max_abs_vs_library"] = invariance(model, kept)
            if a.keep_samples and kept:
                score.save(Path(a.out) / "samples" / f"r{rep}_steps{steps}_rate{rate:g}.npz", kept)
            rows.append(s)
            time.sleep(0.5)
    return rows


def parse_rates(text: str) -> list[float] | None:
    if text == "auto":
        return None
    try:
        rates = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--rates must be 'auto' or comma-separated numbers, got {text!r}") from None
    if not rates or min(rates) <= 0:
        raise SystemExit(f"--rates must be > 0, got {text!r}")
    return rates


def parse_steps(text: str) -> list:
    out = []
    for v in (t.strip() for t in text.split(",") if t.strip()):
        if v != "auto" and not (v.isdigit() and int(v) >= 1):
            raise SystemExit(f"--steps takes integers >= 1 and 'auto', got {v!r}")
        out.append(v if v == "auto" else int(v))
    return out


def parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="digits")
    p.add_argument("--server", default=None, help="URL of a running server (default: start one)")
    p.add_argument("--server-args", default="", help="extra `flowmap serve` flags when starting one")
    p.add_argument("--mix", default="sweep", help="request mix (loadtests/mixes/NAME or a file)")
    p.add_argument("--steps", default="1,2,3,4,auto")
    p.add_argument("--rates", default="auto", help="offered req/s, comma-separated, or 'auto'")
    p.add_argument("--seconds", type=float, default=6.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument(
        "--auto-deadline-ms", type=float, default=None, help="deadline_ms of auto requests (default: the SLO)"
    )
    p.add_argument("--per-class", type=int, default=score.PER_CLASS, help="samples per class scored")
    p.add_argument(
        "--fill",
        action="store_true",
        help="run each point until its samples fill --per-class of every class (longer at low load), so "
        "every point's FD is at eval's sample count",
    )
    p.add_argument("--max-seconds", type=float, default=120.0, help="a --fill point's longest run")
    p.add_argument("--eval-seeds", default="0,1,2,3,4", help="seeds of the `flowmap eval` reference")
    p.add_argument("--out", default="runs/sweep")
    p.add_argument("--keep-samples", action="store_true", help="also write OUT/samples/*.npz")
    p.add_argument("--skip-eval", action="store_true", help="no `flowmap eval` reference (tests)")
    a = p.parse_args(argv)
    for name in ("seconds", "max_seconds", "per_class"):
        if getattr(a, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(a, name)}")
    return a


def meta(a, url: str, ceiling: dict, cap: dict) -> dict:
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {os.cpu_count()} vCPU, {platform.python_version()}",
        "command": "python -m loadtests.sweep " + " ".join(shlex.quote(v) for v in sys.argv[1:]),
        "server": url
        if a.server
        else f"flowmap serve --model {a.model} --max-steps 4 --threads 1 "
        f"--api-workers 1 {a.server_args}".strip(),
        "git": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "ceiling": ceiling,
        "capacity_rps": cap,  # closed loop, 32 connections, by steps
        "seconds": a.seconds,
        "fill": a.fill,
        "warmup": a.warmup,
        "mix": a.mix,
        "slo_ms": load_mix(a.mix).entries[0].slo_ms,
        "auto_deadline_ms": a.auto_deadline_ms,
        "load_before": uptime(),
    }


def sweep(a, url: str) -> dict:
    from flowmap.checkpoint import load_model

    mix, model = load_mix(a.mix), load_model(a.model)
    a.classes = openloop.model_info(url)["num_classes"]
    ceiling = openloop.ceiling(url, rate=20000, seconds=1.0)
    print(
        f"generator ceiling: {ceiling['healthz_rps']:.0f} req/s (GET /healthz, 64 connections)",
        file=sys.stderr,
    )
    rates, cap = parse_rates(a.rates), {k: capacity(url, mix, k) for k in (4, 1)}
    print(f"closed-loop capacity (32 connections), req/s by steps: {cap}", file=sys.stderr)
    if rates is None:
        rates = [round(cap[4] * f, 1) for f in LADDER]
    info = meta(a, url, ceiling, cap)
    rows = []
    for rep in range(a.repeat):
        print(f"repeat {rep + 1}/{a.repeat}", file=sys.stderr, flush=True)
        rows += run_repeat(url, mix, rates, parse_steps(a.steps), a, rep, model)
    info["load_after"] = uptime()
    fixed = sorted({int(r["steps"]) for r in rows if r["steps"] != "auto"})
    seeds = [int(s) for s in a.eval_seeds.split(",") if s.strip()]
    ref = {} if a.skip_eval or not fixed else score.eval_rows(model, fixed, seeds, a.per_class)
    return {"meta": info, "rates": rates, "rows": rows, "eval": {str(k): v for k, v in ref.items()}}


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    proc = None if a.server else start_server(a.model, a.server_args)
    try:
        result = sweep(a, a.server or proc.url)
    finally:
        if proc is not None:
            proc.stop()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(result, indent=1))
    text = sweep_report.markdown(result)
    (out / "sweep.md").write_text(text)
    sweep_report.plot_all(result, out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
