"""PNG output: image grids for image models, a density render for 2-D point clouds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor

from flowmap.data import to_uint8


def grid(x: Tensor, nrow: int | None = None, pad: int = 1, scale: int = 1) -> np.ndarray:
    """[N, C, H, W] in model space -> one uint8 image [rows*(H+pad)+pad, ..., C] (C = 1 or 3)."""
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    img = to_uint8(x).transpose(0, 2, 3, 1)  # [N, H, W, C]
    out = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = (
            img[i]
        )
    return out.repeat(scale, 0).repeat(scale, 1)


def scatter(points: Tensor, size: int = 256, extent: float = 3.0) -> np.ndarray:
    """[N, 2] points -> a grey density image over [-extent, extent]^2 (white background)."""
    p = points.detach().cpu().numpy()
    ij = np.clip(((p + extent) / (2 * extent) * size).astype(int), 0, size - 1)
    counts = np.zeros((size, size))
    np.add.at(counts, (size - 1 - ij[:, 1], ij[:, 0]), 1)
    dens = np.log1p(counts) / max(np.log1p(counts).max(), 1e-9)
    return (255 * (1 - dens))[..., None].astype(np.uint8)


def save_png(path: Path, samples: Tensor, image: bool, nrow: int | None = None, scale: int = 4) -> None:
    arr = grid(samples, nrow, scale=scale) if image else scatter(samples)
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)
