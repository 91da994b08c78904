"""Seconds per training step and peak memory of each method at a data set's preset (docs/methods.md).

    python scripts/train_costs.py --data mnist --steps 4 [--methods fm,esd,...] [--set precision=fp32]

Each method runs in its own process (peak RSS is per process): `flowmap train` for --steps steps, timed
after the first (which builds and probes); the distilling methods get a 1-step fm teacher of the same
net, trained first. One torch thread, as the shipped recipes use.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

TEACHERS = ("cd", "distill", "lmd", "emd")
CHILD = r"""
import json, resource, sys, time, torch
import flowmap.train as tr
cfg = tr.TrainConfig.from_dict(json.loads(sys.argv[1]))
stamps = []
real = tr._step
def timed(*a, **k):
    real(*a, **k)
    stamps.append(time.perf_counter())
tr._step = timed
tr.train(cfg, progress=False)
per = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
print(json.dumps({"s_per_step": per, "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def run(cfg: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1][:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from flowmap.presets import PRESETS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--methods", default="fm,esd,esdt,lsd,psd,ct,cd,distill,lmd,emd")
    ap.add_argument(
        "--set", action="append", default=[], help="NAME=VALUE over the preset, e.g. precision=fp32"
    )
    args = ap.parse_args()
    base = PRESETS.get(args.data, {}) | {"data": args.data, "steps": args.steps, "threads": 1}
    for item in args.set:
        k, v = item.split("=", 1)
        base[k] = type(base[k])(v) if k in base else v
    with tempfile.TemporaryDirectory() as tmp:
        teacher = str(Path(tmp) / "teacher.safetensors")
        run(base | {"method": "fm", "steps": 1, "out": teacher})
        print(f"| method | s / step (batch {base.get('batch_size')}) | peak RSS GiB |\n|---|---:|---:|")
        for m in args.methods.split(","):
            cfg = base | {"method": m, "out": str(Path(tmp) / f"{m}.safetensors")}
            if m in TEACHERS:
                cfg["teacher"] = teacher
            r = run(cfg)
            cell = r["error"] if "error" in r else f"{r['s_per_step']:.2f} | {r['peak_gib']:.2f}"
            print(f"| {m} | {cell} |", flush=True)


if __name__ == "__main__":
    main()
