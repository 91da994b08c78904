"""Quality metrics: gmm8 against its exact flow; images via a small classifier's feature space."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from flowmap.data import gmm8_exact_flow, gmm8_variance_trace


def gmm8_relative_mse(sampler, n: int = 4096, seed: int = 0, exact_steps: int = 1000) -> float:
    """E||X(noise) - X_exact(noise)||^2 / tr Cov(data) over n noise draws (Issue 2's bar)."""
    noise, exact = _gmm8_reference(n, seed, exact_steps)
    got = sampler(noise.clone()).double()
    return float(((got - exact) ** 2).sum(1).mean() / gmm8_variance_trace())


@lru_cache(maxsize=8)
def _gmm8_reference(n: int, seed: int, exact_steps: int) -> tuple[Tensor, Tensor]:
    """(noise, its exact flow X_{1,0}) for a seed: computed once per process (the RK4 costs seconds)."""
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
    return noise, gmm8_exact_flow(noise.double(), 1.0, 0.0, steps=exact_steps)


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (Heusel et al. 2017, FID)."""
    from scipy import linalg

    mu1, mu2 = f1.mean(0), f2.mean(0)
    c1, c2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    with np.errstate(all="ignore"):
        covmean = linalg.sqrtm(c1 @ c2)
    if not np.isfinite(covmean).all():
        eps = 1e-6 * np.eye(len(c1))
        covmean = linalg.sqrtm((c1 + eps) @ (c2 + eps))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean))


def nearest_distances(a: Tensor, b: Tensor, exclude_self: bool = False) -> Tensor:
    """For each row of a: [N, D], the Euclidean distance to its nearest row of b: [M, D]."""
    d = torch.cdist(a.reshape(len(a), -1).double(), b.reshape(len(b), -1).double())
    if exclude_self:
        d.fill_diagonal_(float("inf"))
    return d.min(1).values


def memorisation_rate(samples: Tensor, train: Tensor, test: Tensor) -> float:
    """Fraction of samples nearer to a training image than 1/4 of the median test-to-train NN distance."""
    threshold = 0.25 * nearest_distances(test, train).median()
    return float((nearest_distances(samples, train) < threshold).double().mean())


def energy_distance(a: Tensor, b: Tensor) -> float:
    """Energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'| between two samples (Szekely & Rizzo)."""
    a, b = a.reshape(len(a), -1).double(), b.reshape(len(b), -1).double()
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


def knn_radii(feats: Tensor, k: int = 3) -> Tensor:
    """Distance from each row to its k-th nearest other row: the radius of its k-NN ball."""
    d = torch.cdist(feats.double(), feats.double())
    return d.kthvalue(k + 1, dim=1).values  # k + 1: the row itself is its own nearest neighbour at 0


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaenniemi et al. 2019): the data manifold is the union of
    k-NN balls around real features; precision = fraction of fakes inside it, recall = fraction of
    reals inside the fakes' manifold. real: [N, D], fake: [M, D]."""
    real, fake = real.reshape(len(real), -1).double(), fake.reshape(len(fake), -1).double()
    d = torch.cdist(fake, real)  # [M, N]
    precision = (d <= knn_radii(real, k)[None, :]).any(1).double().mean()
    recall = (d.T <= knn_radii(fake, k)[None, :]).any(1).double().mean()
    return float(precision), float(recall)


def pca_basis(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(mean [D], top-k principal directions [D, k]) of the rows of x: [N, ...], by SVD in float64."""
    x = x.reshape(len(x), -1).double()
    mean = x.mean(0)
    _, _, vt = torch.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[:k].T


def project(x: Tensor, basis: tuple[Tensor, Tensor]) -> Tensor:
    """Coordinates [N, k] of the rows of x in a pca_basis."""
    mean, comps = basis
    return (x.reshape(len(x), -1).double() - mean) @ comps


def mean_pairwise_distance(x: Tensor) -> float:
    """Mean Euclidean distance over distinct pairs of rows (unbiased in the set size); 0 below 2 rows."""
    x = x.reshape(len(x), -1).double()
    if len(x) < 2:
        return 0.0
    return float(torch.pdist(x).mean())


def class_diversity(samples: Tensor, labels: Tensor, ref: Tensor, ref_labels: Tensor) -> dict[int, float]:
    """Per class c: mean pairwise distance of the samples labelled c over that of the reference images
    of class c (1.0: as varied as real digits; near 0: every sample of the class alike)."""
    out = {}
    for c in ref_labels.unique().tolist():
        mine = samples[labels == c]
        if len(mine) >= 2:
            out[c] = mean_pairwise_distance(mine) / mean_pairwise_distance(ref[ref_labels == c])
    return out


def stratified_subset(labels: Tensor, counts: dict[int, int], generator: torch.Generator) -> Tensor:
    """Indices of a random subset holding counts[c] rows of each class c."""
    parts = []
    for c, n in counts.items():
        idx = (labels == c).nonzero().flatten()
        parts.append(idx[torch.randperm(len(idx), generator=generator)[:n]])
    return torch.cat(parts)


def nn_ratio(
    samples: Tensor,
    train: Tensor,
    test: Tensor,
    y_train: Tensor,
    y_test: Tensor,
    draws: int = 8,
    seed: int = 0,
) -> float:
    """Mean distance from each sample to its nearest training image over the mean distance to its
    nearest test image. The nearest of more images is nearer, so the training side is a random subset
    of the test split's size and class counts, averaged over `draws` subsets: a generator that draws
    fresh digits scores about 1 (held-out digits: 0.98-1.03); one that sits on its training images
    scores below 1, down to about 1 - len(test) / len(train) for exact copies (a copy's source is in a
    subset that often)."""
    g = torch.Generator().manual_seed(seed)
    counts = {c: int((y_test == c).sum()) for c in y_test.unique().tolist()}
    to_train = torch.stack(
        [
            nearest_distances(samples, train[stratified_subset(y_train, counts, g)]).mean()
            for _ in range(draws)
        ]
    )
    return float(to_train.mean() / nearest_distances(samples, test).mean())
