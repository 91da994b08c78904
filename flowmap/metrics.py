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
