"""Quality of image samples (digits, mnist) against the held-out split: one call, `score_images`,
used by `flowmap eval` and the sweep.

Two independent feature spaces, so that blur or mode collapse cannot hide:
- the data set's shipped classifier's 128-d penultimate features (FD, energy, precision/recall, class
  accuracy);
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

# digits: 20 components hold 90% of the train split's pixel variance (10: 74%, 30: 96%). More would
# add directions of pixel noise whose 450-image test covariance is poorly estimated (the FD bias grows
# with dimension^2 / N; 4 of the 64 pixels are constant), fewer would miss stroke detail.
# mnist: 40 hold 79% (20: 65%, 87: 90%); 40^2 / 2500 test images keeps that bias below digits'.
PCA_COMPONENTS = {"digits": 20, "mnist": 40}
SHAPES = {"digits": [1, 8, 8], "mnist": [1, 28, 28]}


def data_for_shape(shape) -> str:
    """The built-in data set whose samples have this shape ([1, 8, 8]: digits, [1, 28, 28]: mnist)."""
    for name, known in SHAPES.items():
        if list(shape) == known:
            return name
    raise ValueError(f"no built-in image data set has samples of shape {list(shape)} (known: {SHAPES})")


@dataclass(frozen=True)
class _Reference:
    data: object  # flowmap.data.Dataset (digits or mnist)
    clf: torch.nn.Module
    basis: tuple[Tensor, Tensor]
    test_feats: np.ndarray  # [N_test, 128] classifier features of the test split
    test_pixels: np.ndarray  # [N_test, PCA_COMPONENTS[name]]


@lru_cache(maxsize=2)
def _reference(name: str) -> _Reference:
    from flowmap.classifier import classifier_path, load_classifier
    from flowmap.data import load_data

    data, clf = load_data(name), load_classifier(classifier_path(name))
    basis = pca_basis(data.x_train, PCA_COMPONENTS[name])
    with torch.inference_mode():
        feats = clf.features(data.x_test).double().numpy()
    return _Reference(data, clf, basis, feats, project(data.x_test, basis).numpy())


def _check(samples: Tensor, labels: Tensor | None, data: str) -> tuple[Tensor, Tensor | None]:
    if data not in SHAPES:
        raise ValueError(f"quality scores data {sorted(SHAPES)}, not {data!r}")
    if not isinstance(samples, Tensor) or samples.dim() != 4 or list(samples.shape[1:]) != SHAPES[data]:
        shape = list(samples.shape) if isinstance(samples, Tensor) else type(samples).__name__
        want = ", ".join(map(str, SHAPES[data]))
        raise ValueError(f"{data} samples must be a tensor [N, {want}] in model space, got {shape}")
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
def score_images(
    samples: Tensor, labels: Tensor | None = None, *, data: str = "digits", seed: int = 0
) -> dict[str, float]:
    """Every quality number `flowmap eval` reports for image samples of a built-in data set (digits
    [N, 1, 8, 8], mnist [N, 1, 28, 28]; model space in [-1, 1]), against its test split. `labels`: the
    requested classes [N] (class_acc is reported only with them; without them, diversity groups
    samples by the classifier's verdict). `seed` fixes the train-split subsets of the nearest-neighbour
    ratio; nothing else is random."""
    x, labels = _check(samples, labels, data)
    ref = _reference(data)
    feats = ref.clf.features(x).double()
    predicted = ref.clf.head(feats.float()).argmax(1)
    precision, recall = precision_recall(torch.from_numpy(ref.test_feats), feats)
    split = ref.data
    diversity = class_diversity(x, predicted if labels is None else labels, split.x_test, split.y_test)
    out = {
        "fd": frechet_distance(feats.numpy(), ref.test_feats),
        "fd_pixel": frechet_distance(project(x, ref.basis).numpy(), ref.test_pixels),
        "class_acc": float((predicted == labels).double().mean()) if labels is not None else None,
        "precision": precision,
        "recall": recall,
        "diversity": float(np.mean(list(diversity.values()))) if diversity else 0.0,
        "diversity_min": min(diversity.values(), default=0.0),
        "nn_ratio": nn_ratio(x, split.x_train, split.x_test, split.y_train, split.y_test, seed=seed),
        "memorised": memorisation_rate(x, split.x_train, split.x_test),
        "energy": energy_distance(feats, torch.from_numpy(ref.test_feats)),
    }
    return {k: v for k, v in out.items() if v is not None}


@torch.inference_mode()
def reference_floors(data: str = "digits") -> dict[str, float]:
    """The train split scored as if it were samples: the floor each FD can reach with real images."""
    ref = _reference(data)
    train = ref.data.x_train
    return {
        "fd": frechet_distance(ref.clf.features(train).double().numpy(), ref.test_feats),
        "fd_pixel": frechet_distance(project(train, ref.basis).numpy(), ref.test_pixels),
    }
