"""The sweep's markdown report, goals and PNG plots (from the JSON loadtests.sweep writes).

python -m loadtests.sweep_report runs/sweep/sweep.json    # re-render OUT/sweep.md and the plots
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from loadtests.plots import Panel, panels


def span(values, spec: str = ".1f") -> str:
    v = [x for x in values if x is not None and x == x]
    if not v:
        return "n/a"
    lo, hi = format(min(v), spec), format(max(v), spec)
    return lo if lo == hi else f"{lo}–{hi}"


def cells(result: dict) -> dict[tuple[str, float], list[dict]]:
    """(steps, rate) -> its rows over the repeats."""
    out = defaultdict(list)
    for r in result["rows"]:
        out[(r["steps"], r["rate"])].append(r)
    return out


def q(row: dict, key: str):
    return (row.get("quality") or {}).get(key)


def settings(result: dict) -> list[str]:
    return list(dict.fromkeys(r["steps"] for r in result["rows"]))


# ---- goals --------------------------------------------------------------------------------------


def knee(rows: list[dict], limit: float = 0.9) -> float | None:
    """The lowest offered rate at which attainment falls below `limit` (None: never)."""
    below = [r["rate"] for r in rows if r["attainment"] < limit]
    return min(below) if below else None


def goals_of_repeat(rows: list[dict], noise: float = 0.0) -> dict:
    """Issue 10's auto goals on one repeat: 4-step knee L90, auto/4-step goodput there and at the highest
    load offered to both (`top`: rate, ratio), auto's worst attainment up to 2 L90, and whether auto's FD
    rises with load: no point below the previous one by more than two sd of the difference of two noisy
    points, 2 sqrt(2) x `noise` (the FD's relative seed noise) x its value; 10% without a reference."""
    by = defaultdict(dict)
    for r in rows:
        by[r["steps"]][r["rate"]] = r
    four, auto = by.get("4", {}), by.get("auto", {})
    l90 = knee(list(four.values()))
    out = {
        "l90": l90,
        "goodput_ratio": None,
        "worst_attainment_to_2x": None,
        "fd_monotone": None,
        "top": None,
    }
    both = sorted(set(four) & set(auto))
    if both:  # the highest load offered to both: past the knee, if the ladder reaches it
        top = both[-1]
        a, f = auto[top]["goodput_rps"], four[top]["goodput_rps"]
        out["top"] = (top, a / f if f > 0 else (float("inf") if a > 0 else None))
    if l90 is None or not auto:
        return out
    if l90 in auto and four[l90]["goodput_rps"] > 0:
        out["goodput_ratio"] = auto[l90]["goodput_rps"] / four[l90]["goodput_rps"]
    elif l90 in auto:
        out["goodput_ratio"] = float("inf") if auto[l90]["goodput_rps"] > 0 else None
    upto = [auto[r]["attainment"] for r in auto if r <= 2 * l90]
    out["worst_attainment_to_2x"] = min(upto) if upto else None
    fds = same_n_fds([auto[r] for r in sorted(auto)])
    if len(fds) > 1:
        tol = lambda a: (2 * 2**0.5 * noise if noise else 0.1) * a  # noqa: E731
        out["fd_monotone"] = bool(all(b >= a - tol(a) for a, b in zip(fds, fds[1:], strict=False)))
    return out


def top_cell(g: dict) -> str:
    """The goal table's cell for auto / fixed 4 steps at the highest load both were offered (a target
    rate, as L90 is). At L90 fixed 4 steps still serves ~90% of what is offered, so the ratio there stays
    near 1 / 0.9 whatever auto does; past the knee fixed 4 steps refuses, and the ratio shows the trade."""
    if g.get("top") is None or g["top"][1] is None:
        return "n/a"
    rate, r = g["top"]
    where = f", {rate / g['l90']:.1f}x L90" if g["l90"] else ""
    return f"{r:.2f}x at {rate:g} req/s{where}"


def rows_at(result: dict, steps: str) -> list[dict]:
    """The sweep's points of one step setting ("1".."4" or "auto"), every load and repeat."""
    return [r for r in result["rows"] if r["steps"] == steps]


def same_n_fds(points: list[dict]) -> list[float]:
    """The FDs of the points scored on the most samples, in order. FD falls with the sample count (its
    small-sample bias), and a low-load point of a short run returns fewer samples than the pool holds:
    comparing it with a full one would read that bias as a quality change."""
    scored = [(q(p, "n") or 0, q(p, "fd")) for p in points]
    scored = [(n, fd) for n, fd in scored if fd is not None]
    most = max((n for n, _ in scored), default=0)
    return [fd for n, fd in scored if n == most]


def seed_noise(result: dict) -> float:
    """The FD's relative seed noise: the largest sd / mean over seeds of `flowmap eval`'s FD at any step
    count (0: no reference)."""
    rel = [
        float(np.std(fd, ddof=1) / np.mean(fd))
        for fd in ([e["fd"] for e in ev] for ev in result.get("eval", {}).values())
        if len(fd) > 1
    ]
    return max(rel) if rel else 0.0


def goals(result: dict) -> list[str]:
    reps = defaultdict(list)
    for r in result["rows"]:
        reps[r["repeat"]].append(r)
    noise = seed_noise(result)
    gs = [goals_of_repeat(v, noise) for _, v in sorted(reps.items())]
    verdict = lambda ok: "n/a" if ok is None else ("met" if ok else "**NOT met**")
    ratio = [g["goodput_ratio"] for g in gs]
    worst = [g["worst_attainment_to_2x"] for g in gs]
    mono = [g["fd_monotone"] for g in gs]
    all_ok = lambda vs, f: None if not vs or None in vs else all(f(v) for v in vs)
    rows = [
        (
            "fixed 4 steps: lowest offered load below 90% attainment (L90)",
            f"{span([g['l90'] for g in gs], '.0f')} req/s",
            "",
        ),
        (
            "auto goodput at L90 >= 2x fixed 4 steps",
            f"{span(ratio, '.2f')}x",
            verdict(all_ok(ratio, lambda v: v >= 2)),
        ),
        (
            "auto goodput / fixed 4 steps at the highest load offered to both (no goal)",
            "; ".join(top_cell(g) for g in gs),
            "",
        ),
        (
            "auto attainment >= 99% up to 2 x L90",
            f"worst {span(worst, '.3f')}",
            verdict(all_ok(worst, lambda v: v >= 0.99)),
        ),
        (
            "auto FD rises with load (no point below the previous by more than 2 sd of the FD's seed noise; "
            "points scored on the most samples)",
            str(mono),
            verdict(all_ok(mono, bool)),
        ),
    ]
    return ["| goal | measured (per repeat) | met |", "|---|---|---|"] + [
        f"| {g} | {m} | {v} |" for g, m, v in rows
    ]


# ---- tables -------------------------------------------------------------------------------------


LOAD_COLUMNS = (
    "steps | offered req/s | SLO attainment | goodput req/s | p50 ms | p99 ms | FD | FD pixel | class acc"
    " | recall | samples scored | steps used (1/2/3/4) | non-200 | load avg (1/5/15 min)"
)


LAGGED_MS = 20.0  # generator lag p99 above which a point is marked: the generator fell behind its schedule


def load_row(steps: str, rs: list[dict]) -> str:
    bad = defaultdict(int)
    for r in rs:
        for code, n in r["statuses"].items():
            if code != "200":
                bad[code] += n
    chosen = "/".join(map(str, np.sum([r["chosen_steps"] for r in rs], 0).tolist()))
    col = lambda key, spec=".1f": span([r[key] for r in rs], spec)  # noqa: E731
    qual = lambda key, spec: span([q(r, key) for r in rs], spec)  # noqa: E731
    lagged = any(r["lag_p99_ms"] > LAGGED_MS for r in rs)
    vals = [
        steps,
        col("offered_rps", ".0f") + (" †" if lagged else ""),
        col("attainment", ".3f"),
        col("goodput_rps", ".0f"),
        col("p50_ms"),
    ]
    vals += [col("p99_ms"), qual("fd", ".2f"), qual("fd_pixel", ".2f"), qual("class_acc", ".3f")]
    vals += [
        qual("recall", ".3f"),
        qual("n", ".0f"),
        chosen,
        str(dict(bad) or ""),
        "; ".join(r["load"] for r in rs),
    ]
    return "| " + " | ".join(vals) + " |"


def load_table(result: dict) -> list[str]:
    head = ["| " + LOAD_COLUMNS + " |", "|---|" + "---:|" * 10 + "---|---|---|"]
    return head + [load_row(steps, rs) for (steps, _), rs in cells(result).items()]


EVAL_COLUMNS = (
    "steps | eval FD: mean ± sd over seeds (min–max) | sweep FD: mean ± sd over points (min–max)"
    " | agree: abs(mean difference) <= 2 seed sd | eval FD pixel | sweep FD pixel | eval class acc"
    " | sweep class acc | max abs server - library"
)


def agree(fd: list, efd: list, n: list[int], n_eval: list[int]) -> str:
    """Does the sweep's mean FD (over its points scored on eval's sample count: FD falls with the count, so
    only those compare) lie within 2 seed-noise sd of eval's mean (over seeds)? The seed noise is eval's sd
    over seeds; the ratio is printed, and how many points were used when not all."""
    if len(efd) < 2:
        return "n/a"
    full = [f for f, k in zip(fd, n, strict=True) if f is not None and k >= max(n_eval)]
    if not full:
        return f"n/a (scored at most {max(n, default=0)} samples, eval {max(n_eval)})"
    sd = float(np.std(efd, ddof=1))
    z = abs(float(np.mean(full)) - float(np.mean(efd))) / sd if sd else float("inf")
    used = "" if len(full) == len(fd) else f"; {len(full)} of {len(fd)} points at eval's count"
    return f"{'yes' if z <= 2 else '**no**'} ({z:.1f} sd{used})"


def mean_sd(v: list) -> str:
    v = [x for x in v if x is not None]
    if not v:
        return "n/a"
    sd = f" ± {np.std(v, ddof=1):.2f}" if len(v) > 1 else ""
    return f"{np.mean(v):.2f}{sd} ({span(v, '.2f')})"


def eval_row(result: dict, steps: str) -> str:
    rows = rows_at(result, steps)
    ev = result.get("eval", {}).get(steps, [])
    fd, efd = [q(r, "fd") for r in rows], [e["fd"] for e in ev]
    vals = [
        steps,
        mean_sd(efd),
        mean_sd(fd),
        agree(fd, efd, [q(r, "n") or 0 for r in rows], [e.get("n", 1000) for e in ev]),
        span([e["fd_pixel"] for e in ev], ".2f"),
    ]
    vals += [span([q(r, "fd_pixel") for r in rows], ".2f"), span([e.get("class_acc") for e in ev], ".3f")]
    vals += [
        span([q(r, "class_acc") for r in rows], ".3f"),
        span([r.get("max_abs_vs_library") for r in rows], ".1e"),
    ]
    return "| " + " | ".join(vals) + " |"


def eval_table(result: dict) -> list[str]:
    """Sweep quality per step count (over all loads and repeats) against `flowmap eval` (several seeds)."""
    head = ["| " + EVAL_COLUMNS + " |", "|---|---|---|---|---|---|---|---|---:|"]
    return head + [eval_row(result, s) for s in settings(result)]


def markdown(result: dict) -> str:
    m = result["meta"]
    c = m["ceiling"]
    L = [
        f"Date {m['date']}; machine {m['machine']}; git {m['git']}; load average before {m['load_before']}, "
        f"after {m.get('load_after', '?')}.",
        f"Command: `{m['command']}`; server: `{m['server']}`; mix `{m['mix']}`; {m['seconds']:g} s per point "
        f"after {m['warmup']:g} s warm-up; SLO {m.get('slo_ms', 100):g} ms; auto requests' deadline_ms "
        f"{m.get('auto_deadline_ms') or m.get('slo_ms', 100):g}.",
        f"Generator ceiling (GET /healthz, {c['connections']} connections): {c['healthz_rps']:.0f} req/s."
        + "".join(
            f" Closed-loop capacity at {k} step(s), 32 connections: {v:.0f} req/s."
            for k, v in (m.get("capacity_rps") or {}).items()
        ),
        "",
        "### Latency, SLO and quality by steps and offered load",
        "",
        *load_table(result),
        "",
        f"† the generator's lag behind its schedule exceeded {LAGGED_MS:g} ms (p99) in a repeat: the load "
        "generator shared the CPUs and fell behind, so that point under-offers and over-reports latency.",
        "",
        "### Quality against `flowmap eval`",
        "",
        *eval_table(result),
        "",
        "### Goals (auto)",
        "",
        *goals(result),
    ]
    return "\n".join(L) + "\n"


# ---- plots --------------------------------------------------------------------------------------


def mean_series(result: dict, steps: str, x: str, y) -> list[tuple[float, float]]:
    pts = defaultdict(list)
    for r in result["rows"]:
        if r["steps"] == steps:
            v = y(r)
            if v is not None:
                pts[r[x] if x != "offered" else r["rate"]].append(v)
    return [(k, float(np.mean(v))) for k, v in sorted(pts.items())]


def plot_all(result: dict, out: Path) -> list[Path]:
    fixed = [s for s in settings(result) if s != "auto"]
    rates = sorted({r["rate"] for r in result["rows"]})
    lo = rates[0]
    lat = {}
    for rate in (lo, rates[len(rates) // 2]):
        for p in ("p50_ms", "p99_ms"):
            lat[f"{p[:3]} @ {rate:g}/s"] = [
                (int(s), v)
                for s in fixed
                for _, v in mean_series(result, s, "rate", lambda r, p=p: r[p])
                if _ == rate
            ]
    fd = {  # points scored on the most samples only: FD falls with the sample count
        "sweep FD (mean of the points on the most samples)": [
            (int(s), float(np.mean(same_n_fds(rows_at(result, s)) or [np.nan]))) for s in fixed
        ]
    }
    ev = result.get("eval", {})
    fd["flowmap eval FD (mean of seeds)"] = [
        (int(k), float(np.mean([e["fd"] for e in v]))) for k, v in ev.items()
    ]
    paths = [
        panels(
            out / "steps.png",
            [Panel("latency (ms) vs steps", "steps", lat), Panel("FD vs steps", "steps", fd)],
        )
    ]
    every = settings(result)
    good = {f"steps={s}": mean_series(result, s, "rate", lambda r: r["goodput_rps"]) for s in every}
    att = {f"steps={s}": mean_series(result, s, "rate", lambda r: r["attainment"]) for s in every}
    paths.append(
        panels(
            out / "load.png",
            [
                Panel("goodput (req/s meeting the SLO) vs offered load", "offered req/s", good),
                Panel("SLO attainment vs offered load", "offered req/s", att, {"0.99": 0.99, "0.9": 0.9}),
            ],
        )
    )
    if "auto" in every:
        paths.append(plot_auto(result, out, fixed))
    return paths


def plot_auto(result: dict, out: Path, fixed: list[str]) -> Path:
    chosen = lambda r: (
        (np.dot(r["chosen_steps"], [1, 2, 3, 4]) / max(1, sum(r["chosen_steps"])))
        if sum(r["chosen_steps"])
        else None
    )
    ref = {}  # the fixed-step FDs auto trades between: eval's (1,000 samples), else the sweep's best-scored
    for s in ("1", "4"):
        ev = [e["fd"] for e in result.get("eval", {}).get(s, [])]
        v = ev or same_n_fds(rows_at(result, s))
        if v and s in fixed:
            ref[f"fixed {s} steps{' (flowmap eval)' if ev else ''}"] = float(np.mean(v))
    slo_ms = result["meta"].get("slo_ms", 100.0)
    slo = {f"SLO {slo_ms:g} ms": slo_ms}
    return panels(
        out / "auto.png",
        [
            Panel(
                "auto: mean steps used vs offered load",
                "offered req/s",
                {"auto": mean_series(result, "auto", "rate", chosen)},
            ),
            Panel(
                "auto: FD vs offered load",
                "offered req/s",
                {"auto": mean_series(result, "auto", "rate", lambda r: q(r, "fd"))},
                ref,
            ),
            Panel(
                "auto: p99 latency (ms) vs offered load",
                "offered req/s",
                {"auto": mean_series(result, "auto", "rate", lambda r: r["p99_ms"])},
                slo,
            ),
        ],
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.sweep_report",
        description="Re-render a sweep's report (sweep.md and its plots, next to the JSON) from sweep.json.",
    )
    p.add_argument("path", type=Path, help="the sweep's JSON (OUT/sweep.json)")
    path = p.parse_args(argv).path
    if not path.is_file():
        p.error(f"{path}: no such file")
    result = json.loads(path.read_text())
    text = markdown(result)
    (path.parent / "sweep.md").write_text(text)
    plot_all(result, path.parent)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
