"""How far is each teacher solve of (1, 0) from the converged ODE, from the same noise and labels?

    python scripts/solver_error.py [--model mnist] [--per-class 20] [--seed 0] [--ref-steps 128]

The field is the model's own velocity, its diagonal u(x, t, t, y) (guidance 1). Prints, per solve, its
teacher calls and the mean RMS pixel distance to a `--ref-steps` Heun solve (pixels in [-1, 1]), then
each quarter's own error from the converged state at its start. Used in docs/methods.md
(`--teacher-min-steps`) to choose which of distill's teacher solves to make finer.
"""

from __future__ import annotations

import argparse

import torch

from flowmap.checkpoint import load_model
from flowmap.evaluate import balanced_labels
from flowmap.samplers import make_noise
from flowmap.teacher import ab2_solve_rows, heun_solve_rows

AB = {1: (1.0,), 2: (1.5, -0.5), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def ab_k(order: int):
    """k-step Adams-Bashforth from an Euler start (lower orders until the history fills), same call shape
    as flowmap.teacher's solvers (one step count for every row)."""

    @torch.no_grad()
    def run(field, x, s, t, steps):
        h, tau, past = float((t - s)[0] / steps[0]), float(s[0]), []
        b = field(torch.arange(len(x)))
        for _ in range(int(steps[0])):
            past = [b(x, torch.full_like(s, tau)), *past][:order]
            x, tau = x + h * sum(w * d for w, d in zip(AB[len(past)], past, strict=True)), tau + h
        return x

    return run


class Probe:
    """The model's own velocity from fixed noise and labels, solved over (s, t) by a teacher solver."""

    def __init__(self, name: str, per_class: int, seed: int):
        model = load_model(name)
        self.net, c = model.net.eval(), max(model.num_classes, 1)
        self.y = balanced_labels(c, per_class) if model.num_classes else None
        self.noise = make_noise(c * per_class, model.shape, seed)

    def field(self, rows):
        labels = None if self.y is None else self.y[rows]
        return lambda x, tau: self.net(x, tau, tau, labels)

    def solve(self, solver, x, s: float, t: float, steps: int):
        n = len(x)
        return solver(self.field, x, torch.full((n,), s), torch.full((n,), t), torch.full((n,), steps))

    def chain(self, solver, steps: list[int]):
        """(1, 0) as len(steps) equal segments, steps[i] solver steps in segment i."""
        x, edges = self.noise.clone(), [1 - i / len(steps) for i in range(len(steps) + 1)]
        for k, s, t in zip(steps, edges[:-1], edges[1:], strict=True):
            x = self.solve(solver, x, s, t, k)
        return x


def rms(x, to) -> float:
    return float((x - to).flatten(1).pow(2).mean(1).sqrt().mean())


ROWS = [
    ("AB2, four quarters of 4 steps (4-step targets)", 16, ab2_solve_rows, [4] * 4),
    ("AB2, 16 uniform steps", 16, ab2_solve_rows, [16]),
    ("AB3, four quarters of 4 steps", 16, ab_k(3), [4] * 4),
    ("AB4, four quarters of 4 steps", 16, ab_k(4), [4] * 4),
    ("AB2, quarters of 3, 3, 3, 8 steps", 17, ab2_solve_rows, [3, 3, 3, 8]),
    ("Heun, 8 uniform steps", 16, heun_solve_rows, [8]),
    ("Heun, 16 uniform steps", 32, heun_solve_rows, [16]),
    ("AB2, four quarters of 8 steps", 32, ab2_solve_rows, [8] * 4),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mnist")
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ref-steps", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(1)
    probe = Probe(args.model, args.per_class, args.seed)
    ref = probe.solve(heun_solve_rows, probe.noise.clone(), 1.0, 0.0, args.ref_steps)
    print(f"{args.model}, {len(ref)} samples, seed {args.seed}: RMS to a {args.ref_steps}-step Heun solve")
    for name, calls, solver, steps in ROWS:
        print(f"{name:50s} {calls:3d} calls  {rms(probe.chain(solver, steps), ref):.4f}", flush=True)
    x = probe.noise.clone()
    for i in range(4):
        s, t = 1 - i / 4, 1 - (i + 1) / 4
        good = probe.solve(ab2_solve_rows, x.clone(), s, t, 32)
        errs = [
            f"{k} steps {rms(probe.solve(ab2_solve_rows, x.clone(), s, t, k), good):.4f}" for k in (2, 4, 8)
        ]
        print(f"quarter ({s:g}, {t:g}), AB2 from the converged state: {'  '.join(errs)}", flush=True)
        x = good


if __name__ == "__main__":
    main()
