"""Quality of digits samples against the held-out split: one call, used by `flowmap eval` and the sweep.

Two independent feature spaces, so that blur or mode collapse cannot hide:
- the shipped classifier's 128-d penultimate features (FD, energy, precision/recall, class accuracy);
  a 10-class classifier discards much of the within-class detail that blur removes;
- pixel space, projected on the top PCA_COMPONENTS principal directions of the train split (FD).
Plus per-class diversity (pixel space, against the test split), the train/test nearest-neighbour
ratio and the memorisation rate (pixel space, against both splits).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from flowmap.metrics import (
    class_diversity,
    energy_distance,
    frechet_distance,
    memorisation_rate,
    nn_ratio,
    pca_basis,
    precision_recall,
    project,
)

# 20 components hold 90% of the train split's pixel variance (10: 74%, 30: 96%). More would add
# directions of pixel noise whose 450-image test covariance is poorly estimated (the FD bias grows
# with dimension^2 / N; 4 of the 64 pixels are constant), fewer would miss stroke detail.
PCA_COMPONENTS = 20
SHAPE = [1, 8, 8]


@dataclass(frozen=True)
class _Reference:
    data: object  # flowmap.data.Dataset (digits)
    clf: torch.nn.Module
    basis: tuple[Tensor, Tensor]
    test_feats: np.ndarray  # [450, 128] classifier features of the test split
    test_pixels: np.ndarray  # [450, PCA_COMPONENTS]


@lru_cache(maxsize=1)
def _reference() -> _Reference:
    from flowmap.classifier import load_classifier
    from flowmap.data import load_digits

    data, clf = load_digits(), load_classifier()
    basis = pca_basis(data.x_train, PCA_COMPONENTS)
    with torch.inference_mode():
        feats = clf.features(data.x_test).double().numpy()
    return _Reference(data, clf, basis, feats, project(data.x_test, basis).numpy())


def _check(samples: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
    if not isinstance(samples, Tensor) or samples.dim() != 4 or list(samples.shape[1:]) != SHAPE:
        shape = list(samples.shape) if isinstance(samples, Tensor) else type(samples).__name__
        raise ValueError(f"samples must be a tensor [N, 1, 8, 8] in model space, got {shape}")
    if len(samples) < 2 or not bool(torch.isfinite(samples).all()):
        raise ValueError(f"samples must hold at least 2 rows, all finite (got {len(samples)} rows)")
    samples = samples.detach().float().cpu()
    if labels is None:
        return samples, None
    labels = torch.as_tensor(labels).detach().cpu().long().flatten()
    if len(labels) != len(samples) or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"labels must be one class in 0..9 per sample ({len(samples)} samples)")
    return samples, labels


@torch.inference_mode()
def score_digits(samples: Tensor, labels: Tensor | None = None, *, seed: int = 0) -> dict[str, float]:
    """Every quality number `flowmap eval` reports for digits samples [N, 1, 8, 8] (model space,
    x = pixels / 8 - 1), against the test split. `labels`: the requested classes [N] (class_acc is
    reported only with them; without them, diversity groups samples by the classifier's verdict).
    `seed` fixes the train-split subsets of the nearest-neighbour ratio; nothing else is random."""
    x, labels = _check(samples, labels)
    ref = _reference()
    feats = ref.clf.features(x).double()
    predicted = ref.clf.head(feats.float()).argmax(1)
    precision, recall = precision_recall(torch.from_numpy(ref.test_feats), feats)
    data = ref.data
    diversity = class_diversity(x, predicted if labels is None else labels, data.x_test, data.y_test)
    out = {
        "fd": frechet_distance(feats.numpy(), ref.test_feats),
        "fd_pixel": frechet_distance(project(x, ref.basis).numpy(), ref.test_pixels),
        "class_acc": float((predicted == labels).double().mean()) if labels is not None else None,
        "precision": precision,
        "recall": recall,
        "diversity": float(np.mean(list(diversity.values()))) if diversity else 0.0,
        "diversity_min": min(diversity.values(), default=0.0),
        "nn_ratio": nn_ratio(x, data.x_train, data.x_test, data.y_train, data.y_test, seed=seed),
        "memorised": memorisation_rate(x, data.x_train, data.x_test),
        "energy": energy_distance(feats, torch.from_numpy(ref.test_feats)),
    }
    return {k: v for k, v in out.items() if v is not None}


@torch.inference_mode()
def reference_floors() -> dict[str, float]:
    """The train split scored as if it were samples: the floor each number can reach with 1347 real digits."""
    ref = _reference()
    train = ref.data.x_train
    return {
        "fd": frechet_distance(ref.clf.features(train).double().numpy(), ref.test_feats),
        "fd_pixel": frechet_distance(project(train, ref.basis).numpy(), ref.test_pixels),
    }
