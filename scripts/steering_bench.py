"""Measurements for docs/steering.md: steer the unconditional digits model to one digit.

    python scripts/steering_bench.py digits --model digits_uncond --target 3 --out runs/steer/digits
    python scripts/steering_bench.py gmm8 --out runs/steer/gmm8

digits: for each (method, look-ahead, steps, particles or scale): 1000 steered samples; the target-class
rate under the shipped classifier (the reward's own judge), under an independent judge (5-nearest-
neighbour vote in pixel space over the train split), FD in the classifier's feature space against the
target class's test images, and network calls per sample; the class-conditional `digits` model's FD
for that class at the same steps is the reference. Writes results.json, rate_vs_calls.png and grids.
`--model digits` steers the class-conditional model's null-label (unconditional) branch instead.
gmm8: SIR / best-of-N / guidance to one mode at 1, 2, 4 steps: in-mode rate, energy distance to the
exact tilted distribution (flowmap.reward.gmm8_mode_tilted).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from flowmap.checkpoint import load_model
from flowmap.classifier import load_classifier
from flowmap.data import gmm8_means, load_digits
from flowmap.generate import generate
from flowmap.images import save_png
from flowmap.metrics import energy_distance, frechet_distance
from flowmap.reward import gmm8_mode_tilted
from flowmap.samplers import make_noise, sample_flowmap, uniform_grid
from flowmap.steering import SteerSpec, steer, steer_model, steer_noise_rows


class Judge:
    """Target-class rates (classifier, k-NN vote) and FD against one class's test images."""

    def __init__(self, target: int):
        d = load_digits()
        self.target, self.clf = target, load_classifier()
        self.train_x, self.train_y = d.x_train.flatten(1), d.y_train
        self.ref = self._feats(d.x_test[d.y_test == target])

    def _feats(self, x):
        return self.clf.features(x).double().numpy()

    def knn_rate(self, x, k: int = 5) -> float:
        idx = torch.cdist(x.flatten(1), self.train_x).topk(k, largest=False).indices
        votes = torch.mode(self.train_y[idx], dim=1).values
        return float((votes == self.target).double().mean())

    @torch.no_grad()
    def __call__(self, x) -> dict:
        return {
            "rate": float((self.clf(x).argmax(1) == self.target).double().mean()),
            "knn_rate": self.knn_rate(x),
            "fd": frechet_distance(self._feats(x), self.ref),
        }


def null_labels(model, n: int):
    """A class-conditional model runs unconditionally with the null label (CFG's unconditional branch)."""
    return torch.full((n,), model.num_classes) if model.num_classes else None


def run_steer(model, steps, spec, n, seed) -> tuple:
    noise = make_noise(steer_noise_rows(spec, n), model.shape, seed)
    t0 = time.perf_counter()
    if model.num_classes:
        res = steer(model.net, model.shape, steps, noise, spec, null_labels(model, n), seed)
    else:
        res = steer_model(model, steps, noise, spec, seed=seed)
    return res, time.perf_counter() - t0


def digits_configs(args):
    reward = f"class:{args.target}"
    for look in ("flowmap", "denoiser"):
        for p in args.particles:
            yield SteerSpec(reward, args.sir_scale, "sir", p, look)
        for s in args.scales:
            for it in args.iters:
                yield SteerSpec(reward, s, "guide", 1, look, it)


def bench_digits(args) -> dict:
    model, cond, judge = load_model(args.model), load_model("digits"), Judge(args.target)
    out, rows, refs = Path(args.out), [], {}
    (out / "grids").mkdir(parents=True, exist_ok=True)
    for k in args.steps:
        xc = generate(cond, k, make_noise(args.n, cond.shape, args.seed), class_label=args.target)
        refs[k] = judge(xc) | {"calls": k}
        noise = make_noise(args.n, model.shape, args.seed)
        plain = sample_flowmap(model.net, noise, uniform_grid(k), null_labels(model, args.n))
        rows.append({"method": "none", "lookahead": "-", "steps": k, "calls": k, **judge(plain)})
        save_png(out / "grids" / f"none_{k}step.png", plain[:64], True, nrow=8, scale=4)
        save_png(out / "grids" / f"conditional_{k}step.png", xc[:64], True, nrow=8, scale=4)
        for spec in digits_configs(args):
            res, sec = run_steer(model, k, spec, args.n, args.seed)
            row = spec_row(spec, k, res) | {"scale": spec.scale, "seconds": round(sec, 1), **judge(res.x)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if spec.particles == max(args.particles) or spec.iters == max(args.iters):
                name = f"{spec.method}_{spec.lookahead}_{res.calls_per_sample:g}calls_{k}step.png"
                save_png(out / "grids" / name, res.x[:64], True, nrow=8, scale=4)
    return {"target": args.target, "model": args.model, "n": args.n, "conditional": refs, "rows": rows}


def spec_row(spec: SteerSpec, steps: int, res) -> dict:
    """A result row's first columns: the steering configuration and its cost."""
    row = {"method": spec.method, "lookahead": spec.lookahead, "steps": steps, "particles": spec.particles}
    return row | {"iters": spec.iters, "calls": res.calls_per_sample}


def gmm8_configs(mode: int, scale: float):
    reward = f"mode:{mode}"
    for look in ("flowmap", "denoiser"):
        for method, p in (("sir", 8), ("sir", 16), ("sir", 32), ("sir", 64), ("best", 32)):
            yield SteerSpec(reward, scale, method, p, look)
        yield SteerSpec(reward, scale, "guide", 1, look, 7)


def bench_gmm8(args) -> dict:
    model, mode, rows = load_model("gmm8"), args.target % 8, []
    truth = gmm8_mode_tilted(mode, args.gmm_scale, 4000, torch.Generator().manual_seed(7))
    means = gmm8_means(torch.float32)
    for k in args.steps:
        for spec in gmm8_configs(mode, args.gmm_scale):
            res, sec = run_steer(model, k, spec, args.n, args.seed)
            in_mode = float((torch.cdist(res.x, means).argmin(1) == mode).double().mean())
            energy = energy_distance(res.x, truth)
            row = spec_row(spec, k, res) | {"in_mode": in_mode, "energy_to_tilted": energy}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"mode": mode, "scale": args.gmm_scale, "n": args.n, "rows": rows}


def plot_rate(result: dict, path: Path) -> None:
    from flowmap.curves import plot_xy

    lines = {}
    for r in result["rows"]:
        if r["method"] in ("sir", "guide"):
            lines.setdefault(f"{r['method']} {r['lookahead']} {r['steps']}-step", []).append(
                (r["calls"], r["rate"])
            )
    lines = {k: sorted(v) for k, v in lines.items()}
    plot_xy(
        lines,
        path,
        "network calls per sample",
        "target-class rate",
        logx=True,
        title=f"{result['model']} steered to {result['target']}: target-class rate vs network calls",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", choices=["digits", "gmm8"])
    ap.add_argument("--model", default="digits_uncond", help="digits: the conditional model's null label")
    ap.add_argument("--target", type=int, default=3)
    ap.add_argument("--steps", default="1,2,4")
    ap.add_argument("--particles", default="2,4,8,16")
    ap.add_argument("--scales", default="0.3", help="guide: scales")
    ap.add_argument("--iters", default="1,2,4", help="guide: gradient steps per sampling step")
    ap.add_argument("--sir-scale", type=float, default=1.0, help="sir: 1 targets p(x) p(target | x)")
    ap.add_argument("--gmm-scale", type=float, default=1.0)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    args.steps = [int(s) for s in args.steps.split(",")]
    args.particles = [int(s) for s in args.particles.split(",")]
    args.scales = [float(s) for s in args.scales.split(",")]
    args.iters = [int(s) for s in args.iters.split(",")]
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = bench_digits(args) if args.data == "digits" else bench_gmm8(args)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    if args.data == "digits":
        plot_rate(result, out / "rate_vs_calls.png")


if __name__ == "__main__":
    main()
