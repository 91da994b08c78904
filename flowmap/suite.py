"""The methods suite: train every method at an equal CPU budget (seconds), teacher first.

    OMP_NUM_THREADS=1 python -m flowmap.suite --data gmm8 --budget 90 --out runs/suite/gmm8

Each method's steps are set from its measured CPU seconds per step (a short calibration run, process
CPU time so that other jobs on a shared machine do not skew it), so every method gets about `budget`
CPU seconds of training on this machine. The distilling methods
(cd, distill, lmd, emd) use the suite's own `fm` model as their teacher; the teacher's training
time is not counted in their budget. `manifest.json` lists checkpoints, steps and seconds.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from flowmap.losses import LOSSES
from flowmap.presets import PRESETS
from flowmap.train import TrainConfig, arch_config, build_loss, loss_extras, train

DEFAULT_METHODS = ("fm", "esd", "esdt", "lsd", "psd", "ct", "cd", "distill", "lmd", "emd")


def seconds_per_step(cfg: TrainConfig, probe: int = 12, warm: int = 3) -> float:
    """CPU time of `probe` optimiser steps of `cfg`'s method after `warm` warm-up steps (JVP tracing)."""
    from flowmap.data import load_data
    from flowmap.nets import build_net

    torch.manual_seed(cfg.seed)
    data = load_data(cfg.data)
    loss_fn, net = build_loss(cfg), build_net(arch_config(cfg, data))
    extras = loss_extras(loss_fn, cfg, data, copy.deepcopy(net).requires_grad_(False))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr)
    for i in range(warm + probe):
        if i == warm:
            t0 = time.process_time()
        idx = torch.randint(0, len(data.x_train), (cfg.batch_size,))
        y = data.y_train[idx] if data.y_train is not None else None
        opt.zero_grad()
        loss_fn(net, data.x_train[idx], y, **extras).mean().backward()
        opt.step()
    return (time.process_time() - t0) / probe


def run_method(base: TrainConfig, method: str, budget: float, out: Path, teacher: str | None) -> dict:
    cfg = replace(
        base,
        method=method,
        out=str(out / f"{method}.safetensors"),
        teacher=teacher if "teacher" in _uses(method) else None,
    )
    per_step = seconds_per_step(cfg)
    steps = max(50, int(budget / per_step))
    cfg = replace(cfg, steps=steps, ckpt_every=steps, warmup=min(cfg.warmup, steps // 10))
    t0, c0 = time.perf_counter(), time.process_time()
    path = train(cfg, progress=False)
    took, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"{method:8s} {steps:6d} steps {per_step * 1e3:7.1f} ms/step  cpu {cpu:6.1f} s  wall {took:6.1f} s",
        flush=True,
    )
    return {
        "method": method,
        "checkpoint": str(path),
        "steps": steps,
        "cpu_ms_per_step": per_step * 1e3,
        "cpu_seconds": round(cpu, 1),
        "wall_seconds": round(took, 1),
        "teacher": cfg.teacher,
    }


def _uses(method: str) -> tuple[str, ...]:
    from flowmap.losses import make_loss, uses

    return uses(make_loss(method))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flowmap.suite", description=__doc__.splitlines()[0])
    p.add_argument("--data", default="gmm8")
    p.add_argument("--budget", type=float, default=90.0, help="training CPU seconds per method")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--out", required=True, help="folder for checkpoints and manifest.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in LOSSES]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {sorted(LOSSES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = TrainConfig.from_dict(PRESETS.get(args.data, {}) | {"data": args.data, "ema": args.ema})
    teacher, rows = None, []
    for m in sorted(methods, key=lambda m: m != "fm"):  # the fm teacher first
        rows.append(run_method(base, m, args.budget, out, teacher))
        teacher = rows[-1]["checkpoint"] if m == "fm" else teacher
        (out / "manifest.json").write_text(
            json.dumps({"data": args.data, "budget_s": args.budget, "ema": args.ema, "runs": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
