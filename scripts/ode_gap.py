"""How close does each step count come to the model's own ODE, from the same noise and labels?

    python scripts/ode_gap.py [SEED] [--model mnist] [--steps 1,2,4,8] [--ode-steps 64]

Prints, per step count, the RMS pixel distance between the flow-map sample and the 64-step Heun ODE
sample (pixels in [-1, 1]; 100 samples per class, the seed's noise as `flowmap eval` draws it). Used in
docs/methods.md to show why mnist's 4-step FD sits nearer its ODE's than the 2-step one.
"""

from __future__ import annotations

import argparse

import torch

from flowmap.checkpoint import load_model
from flowmap.evaluate import _sample_labelled, balanced_labels, parse_steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("seed", type=int, nargs="?", default=0)
    ap.add_argument("--model", default="mnist")
    ap.add_argument("--steps", default="1,2,4,8")
    ap.add_argument("--ode-steps", type=int, default=64)
    ap.add_argument("--per-class", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model)
    c = max(model.num_classes, 1)
    y = balanced_labels(c, args.per_class) if model.num_classes else None
    n = c * args.per_class
    ode = _sample_labelled(model, args.ode_steps, n, y, args.seed, 1.0, "heun")
    for k in parse_steps(args.steps, "--steps"):
        x = _sample_labelled(model, k, n, y, args.seed, 1.0, "flowmap")
        d = (x - ode).flatten(1).pow(2).mean(1).sqrt()
        print(
            f"seed {args.seed} steps {k}: RMS pixel distance to the {args.ode_steps}-step Heun ODE "
            f"mean {d.mean():.4f} median {d.median():.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
