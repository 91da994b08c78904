"""`flowmap eval`: quality against held-out data (gmm8: the exact flow; images: a classifier)."""

from __future__ import annotations

import torch

from flowmap.checkpoint import Model
from flowmap.data import Dataset, gmm8_sample, load_data
from flowmap.generate import generate
from flowmap.metrics import energy_distance, frechet_distance, gmm8_relative_mse, memorisation_rate
from flowmap.samplers import make_noise


def eval_gmm8(model: Model, steps: list[int], n: int = 4096, seed: int = 0) -> list[dict]:
    """Relative MSE against the exact flow and energy distance to fresh data, per step count."""
    ref = gmm8_sample(n, torch.Generator().manual_seed(seed + 7))
    rows = []
    for k in steps:
        run = lambda z: generate(model, k, z.float())  # noqa: B023
        noise = make_noise(n, [2], seed)
        rows.append({"steps": k, "rel_mse": gmm8_relative_mse(run, n=n, seed=seed),
                     "energy": energy_distance(run(noise), ref)})
    return rows


def balanced_labels(num_classes: int, per_class: int) -> torch.Tensor:
    return torch.arange(num_classes).repeat_interleave(per_class)


def eval_images(model: Model, data: Dataset, steps: list[int], per_class: int = 100, seed: int = 0,
                guidance: float = 1.0) -> dict:
    """Class accuracy, memorisation and FD to the test split in the classifier's feature space."""
    from flowmap.classifier import load_classifier

    clf = load_classifier()
    feats = lambda x: clf.features(x).double().numpy()  # noqa: E731
    floor = frechet_distance(feats(data.x_train), feats(data.x_test))
    c = max(model.num_classes, 1)
    y = balanced_labels(c, per_class) if model.num_classes else None
    rows = []
    for k in steps:
        x = _sample_labelled(model, k, c * per_class, y, seed, guidance)
        row = {"steps": k, "fd": frechet_distance(feats(x), feats(data.x_test)),
               "memorised": memorisation_rate(x, data.x_train, data.x_test)}
        if y is not None:
            row["class_acc"] = float((clf(x).argmax(1) == y).double().mean())
        rows.append(row)
    return {"fd_floor_train_vs_test": floor, "rows": rows}


@torch.inference_mode()
def _sample_labelled(model: Model, steps: int, n: int, y, seed: int, guidance: float) -> torch.Tensor:
    noise = make_noise(n, model.shape, seed)
    if y is None:
        return generate(model, steps, noise)
    parts = [generate(model, steps, noise[y == c], class_label=c, guidance=guidance) for c in y.unique().tolist()]
    return torch.cat(parts)


def evaluate(model: Model, steps: list[int], n: int = 4096, per_class: int = 100, seed: int = 0,
             guidance: float = 1.0) -> dict:
    name = model.config["data"]["name"]
    if name == "gmm8":
        return {"model": model.name, "data": name, "rows": eval_gmm8(model, steps, n, seed)}
    data = load_data(name)
    if list(data.shape) != model.shape:
        raise ValueError(f"model {model.name!r} has shape {model.shape}, data {name!r} has {data.shape}")
    return {"model": model.name, "data": name, **eval_images(model, data, steps, per_class, seed, guidance)}


def format_table(result: dict) -> str:
    rows = result["rows"]
    cols = list(rows[0])
    lines = [f"model {result['model']} on {result['data']}"]
    if "fd_floor_train_vs_test" in result:
        lines.append(f"FD floor (train vs test): {result['fd_floor_train_vs_test']:.3f}")
    lines.append("  ".join(f"{c:>10}" for c in cols))
    for r in rows:
        lines.append("  ".join(f"{r[c]:>10.4f}" if isinstance(r[c], float) else f"{r[c]:>10}" for c in cols))
    return "\n".join(lines)
