"""Quality of the samples a server returned, scored with `flowmap eval`'s metrics on the held-out split.

The load tests keep what the server answered (npy output: float32 samples, with each request's seed,
steps and requested classes). This module
- pools them into one scored set: up to `per_class` samples of each class spread over the run (eval's
  composition: 100 per class), so FD is compared at the sample count `flowmap eval` uses;
- scores a set with `quality()`: flowmap.quality.score_images, the function `flowmap eval` calls;
- reproduces the same requests with the library (`flowmap sample`'s noise-from-seed and sampler), so a
  test can check that the server's samples and their scores equal the library's (batch invariance);
- runs `flowmap eval` itself for several seeds: the reference numbers and the FD's seed noise.

    python -m loadtests.score DIR          # score kept samples (DIR/*.npz from --keep-samples)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

PER_CLASS = 100  # flowmap eval's default: 100 samples per class


def quality(x: np.ndarray, labels: np.ndarray) -> dict:
    """eval's metrics (flowmap.quality.score_images, the function `flowmap eval` calls) of samples
    x [N, 1, 8, 8] or [N, 1, 28, 28] (model space; the data set follows from the shape) whose requested
    classes are labels [N]; plus n, the sample count."""
    from flowmap.quality import data_for_shape, score_images

    xs = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    y = torch.from_numpy(np.asarray(labels, np.int64))
    return {"n": len(xs), **score_images(xs, y, data=data_for_shape(xs.shape[1:]))}


# ---- kept samples ---------------------------------------------------------------------------------


def pool(records: list[dict], per_class: int = PER_CLASS) -> dict:
    """Up to per_class samples of each requested class, spread evenly over the run (a run's start and
    end can differ: "auto" picks fewer steps as the queue builds): {x, labels, steps}."""
    xs, ys, ks = [], [], []
    for r in records:
        xs.append(np.asarray(r["x"], np.float32))
        ys.append(np.asarray(r["labels"], np.int64))
        ks.append(np.full(len(r["labels"]), r["steps"], np.int64))
    if not xs:
        return {"x": np.zeros((0,)), "labels": np.zeros(0, np.int64), "steps": np.zeros(0, np.int64)}
    x, y, k = np.concatenate(xs), np.concatenate(ys), np.concatenate(ks)
    keep = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        keep[idx[np.unique(np.linspace(0, len(idx) - 1, min(per_class, len(idx))).round().astype(int))]] = (
            True
        )
    return {"x": x[keep], "labels": y[keep], "steps": k[keep]}


def save(path: str | Path, records: list[dict]) -> Path:
    """Kept responses as one .npz: x [S, *shape], labels [S], steps [S], and per request its seed,
    steps asked ("auto" as 0) and used, and sample count (samples are concatenated in request order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    per = lambda key: np.array([r[key] for r in records], np.int64)  # noqa: E731
    np.savez_compressed(
        path,
        x=np.concatenate([r["x"] for r in records]) if records else np.zeros((0,), np.float32),
        labels=np.concatenate([np.asarray(r["labels"], np.int64) for r in records]) if records else [],
        seed=per("seed"),
        asked=np.array([0 if r["asked"] == "auto" else r["asked"] for r in records], np.int64),
        steps=per("steps"),
        count=np.array([len(r["labels"]) for r in records], np.int64),
    )
    return path


def load(path: str | Path) -> list[dict]:
    """The records `save` wrote."""
    z = np.load(path)
    ends = np.cumsum(z["count"])
    out = []
    for i, (a, b) in enumerate(zip(np.r_[0, ends[:-1]], ends, strict=True)):
        asked = int(z["asked"][i]) or "auto"
        out.append(
            {
                "seed": int(z["seed"][i]),
                "asked": asked,
                "steps": int(z["steps"][i]),
                "labels": z["labels"][a:b].tolist(),
                "x": z["x"][a:b],
            }
        )
    return out


# ---- the library's samples for the same requests ----------------------------------------------------


@torch.inference_mode()
def library_samples(model, records: list[dict]) -> list[np.ndarray]:
    """What `flowmap sample --seed S --steps K --class C` gives for each record's seed, steps and classes:
    noise from the seed (make_noise), the flow-map sampler, one call per class."""
    from flowmap.generate import generate
    from flowmap.samplers import make_noise

    out = []
    for r in records:
        y = torch.as_tensor(r["labels"])
        noise = make_noise(len(y), model.shape, r["seed"])
        x = torch.empty_like(noise)
        for c in y.unique().tolist():
            x[y == c] = generate(model, r["steps"], noise[y == c], class_label=c, seed=r["seed"])
        out.append(x.numpy())
    return out


def eval_rows(model, steps: list[int], seeds: list[int], per_class: int = PER_CLASS) -> dict[int, list[dict]]:
    """`flowmap eval --steps ... --seed S` (flowmap.evaluate.evaluate) for several seeds: per step count,
    one row per seed. Their spread is the FD's seed noise at eval's sample count."""
    from flowmap.evaluate import evaluate

    out: dict[int, list[dict]] = {k: [] for k in steps}
    for s in seeds:
        for row in evaluate(model, steps, per_class=per_class, seed=s)["rows"]:
            out[row["steps"]].append({"seed": s, "n": per_class * model.num_classes, **row})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="score kept samples (.npz files of --keep-samples)")
    p.add_argument("paths", nargs="+", help=".npz files or folders of them")
    p.add_argument("--per-class", type=int, default=PER_CLASS)
    a = p.parse_args(argv)
    files = [f for q in map(Path, a.paths) for f in (sorted(q.glob("*.npz")) if q.is_dir() else [q])]
    for f in files:
        s = pool(load(f), a.per_class)
        print(json.dumps({"file": str(f), **quality(s["x"], s["labels"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
