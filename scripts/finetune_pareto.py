"""Pareto front of reward fine-tuning for docs/steering.md: one `flowmap finetune` per regulariser weight.

    python scripts/finetune_pareto.py --model digits --reward ink --weights 1,3,10,30,100 --out runs/steer/ft

Each run's last log row (EMA net, fixed held-out noise) gives the reward gain over the base model and
FD against the test split relative to the base's; writes pareto.json and pareto.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flowmap.cli import main as flowmap
from flowmap.curves import plot_xy


def run(args, weight: str) -> dict:
    out = Path(args.out) / f"{args.model}_{args.reward.replace(':', '')}_w{weight}.safetensors"
    argv = ["finetune", "--model", args.model, "--reward", args.reward, "--weight", weight, "--out", str(out)]
    argv += [
        "--steps",
        str(args.steps),
        "--sample-steps",
        str(args.sample_steps),
        "--eval-every",
        str(args.steps // 2),
    ]
    argv += ["--eval-n", str(args.eval_n), "--lr", str(args.lr), "--no-progress"]
    log = out.with_suffix(".log.jsonl")
    done = log.exists() and json.loads(log.read_text().splitlines()[-1])["step"] == args.steps
    if not done and flowmap(argv) != 0:  # a finished run of the same length is reused
        raise SystemExit(f"finetune failed for weight {weight}")
    rows = [json.loads(x) for x in out.with_suffix(".log.jsonl").read_text().splitlines()]
    base, last = rows[0], rows[-1]
    return {
        "weight": float(weight),
        "checkpoint": str(out),
        "reward_base": base["reward"],
        "reward": last["reward"],
        "fd_base": base["fd"],
        "fd": last["fd"],
        "fd_ratio": last["fd"] / base["fd"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits")
    ap.add_argument("--reward", default="ink")
    ap.add_argument("--weights", default="1,3,10,30,100")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--sample-steps", type=int, default=2)
    ap.add_argument("--eval-n", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    results = []
    for w in args.weights.split(","):
        results.append(run(args, w))
        print(json.dumps(results[-1]), flush=True)
    out = Path(args.out)
    (out / "pareto.json").write_text(json.dumps(results, indent=2))
    pts = sorted((r["fd_ratio"], r["reward"] - r["reward_base"]) for r in results)
    plot_xy(
        {f"{args.reward}, weights {args.weights}": pts},
        out / "pareto.png",
        "FD / base FD",
        "reward gain",
        logx=True,
        title=f"fine-tuning {args.model} toward {args.reward}: reward gain vs FD cost",
    )


if __name__ == "__main__":
    main()
