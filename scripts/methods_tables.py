"""Markdown tables for docs/methods.md from a suite folder (manifest.json, eval.json, fm_ode.json).

    python scripts/methods_tables.py runs/suite/gmm8
    python scripts/methods_tables.py runs/suite/digits

eval.json comes from `flowmap eval --model <every suite checkpoint> --steps 1,2,4 --json`, fm_ode.json
from `flowmap eval --model <suite>/fm.safetensors --steps "" --ode-steps 1,2,4,8,16,32,64 --json`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# one table per group of columns (digits: the two FDs and accuracy, then what blur and over-fitting move)
METRICS = {
    "gmm8": [("rel_mse", "energy")],
    "digits": [("fd", "fd_pixel", "class_acc"), ("recall", "diversity", "nn_ratio")],
}


def _fmt(v: float) -> str:
    return f"{v:.4f}" if abs(v) < 1 else f"{v:.2f}"


def methods_table(folder: Path) -> str:
    results = json.loads((folder / "eval.json").read_text())
    results = results if isinstance(results, list) else [results]
    groups = METRICS.get(results[0]["data"], [("fd", "precision")])
    tables = [_group_table(folder, results, g) for g in groups]
    if "fd_floor_train_vs_test" in results[0]:
        floors = f"FD floor (train split vs test split): {results[0]['fd_floor_train_vs_test']:.2f}"
        if "fd_pixel_floor_train_vs_test" in results[0]:
            floors += f"; pixel space: {results[0]['fd_pixel_floor_train_vs_test']:.2f}"
        tables.append(floors + ".")
    return "\n\n".join(tables)


def _group_table(folder: Path, results: list[dict], metrics: tuple[str, ...]) -> str:
    runs = {r["method"]: r for r in json.loads((folder / "manifest.json").read_text())["runs"]}
    steps = [r["steps"] for r in results[0]["rows"]]
    head = ["method", "train steps", "cpu s", "sampler"] + [f"{a} {k}" for a in metrics for k in steps]
    lines = [
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * 2 + "---|" + "---:|" * len(metrics) * len(steps),
    ]
    for res in results:
        m, rows = res["method"], res["rows"]
        cells = [f"`{m}`", str(runs[m]["steps"]), f"{runs[m]['cpu_seconds']:.0f}", rows[0]["sampler"]]
        cells += [_fmt(r[a]) for a in metrics for r in rows]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ode_table(folder: Path) -> str:
    path = folder / "fm_ode.json"
    if not path.exists():
        return ""
    res = json.loads(path.read_text())
    rows = res["rows"]
    names = (
        "rel_mse",
        "energy",
        "fd",
        "fd_pixel",
        "class_acc",
        "precision",
        "recall",
        "diversity",
        "nn_ratio",
    )
    keys = [k for k in names if k in rows[0]]
    lines = ["| Heun steps (2 calls each) | " + " | ".join(str(r["steps"]) for r in rows) + " |"]
    lines.append("|---|" + "---:|" * len(rows))
    lines += [f"| {k} | " + " | ".join(_fmt(r[k]) for r in rows) + " |" for k in keys]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    folder = Path(argv[0])
    print(methods_table(folder))
    ode = ode_table(folder)
    if ode:
        print("\nThe `fm` teacher on its ODE:\n\n" + ode)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
