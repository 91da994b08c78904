"""Generation from a loaded model: noise from a seed (or given), labels, guidance, sampler choice."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from flowmap.checkpoint import Model
from flowmap.interpolants import get_interpolant
from flowmap.labels import cycled
from flowmap.samplers import (
    guided,
    make_noise,
    sample_euler,
    sample_flowmap,
    sample_heun,
    sample_keys,
    sample_stochastic,
    uniform_grid,
)

SAMPLER_NAMES = ("flowmap", "euler", "heun", "stochastic")


def labels(model: Model, n: int, class_label: int | None) -> Tensor | None:
    """[n] labels: the requested class, or classes cycled 0..C-1 when none is given."""
    c = model.num_classes
    if c == 0:
        if class_label is not None:
            raise ValueError(f"--class given, but model {model.name!r} is unconditional")
        return None
    if class_label is None:
        return torch.tensor(cycled(n, c))
    if not 0 <= class_label < c:
        raise ValueError(f"--class {class_label} out of range: model {model.name!r} has classes 0..{c - 1}")
    return torch.full((n,), class_label, dtype=torch.long)


NPY_MAGIC = b"\x93NUMPY"


def describe_file(path: str) -> str:
    """What a file that is not a .npy array looks like, from its first bytes (never parsed further)."""
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        return "an empty file"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (an .npz? pass one array saved with numpy.save)"
    if head[:1] == b"\x80":
        return "a Python pickle"
    try:
        first = head.decode("utf-8").splitlines()[0]
    except (UnicodeDecodeError, IndexError):
        return f"binary data starting {head[:8]!r}"
    return f"a text file (it starts {first[:40]!r})"


def _read_npy(path: str, want: str) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            is_npy = f.read(len(NPY_MAGIC)) == NPY_MAGIC
    except OSError as e:
        raise ValueError(f"--noise {path}: cannot read it ({e.strerror or e}); expected {want}") from None
    if not is_npy:
        raise ValueError(f"--noise {path}: this is {describe_file(path)}; expected {want}")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        why = (
            "an object array, which only unpickling could read" if "pickle" in str(e) else f"unreadable ({e})"
        )
        raise ValueError(f"--noise {path}: a .npy file, but {why}; expected {want}") from None


def load_noise(path: str, shape: list[int]) -> Tensor:
    """Noise rows from a .npy file of shape (N, *shape); never unpickles."""
    want = f"a .npy array (numpy.save) of float noise, shape (N, {', '.join(map(str, shape))})"
    arr = _read_npy(path, want)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"--noise {path}: holds a {arr.dtype} array; expected {want}")
    if arr.ndim != len(shape) + 1 or list(arr.shape[1:]) != list(shape):
        raise ValueError(
            f"--noise {path}: shape {list(arr.shape)} does not match (N, {', '.join(map(str, shape))})"
        )
    noise = torch.from_numpy(np.asarray(arr, dtype=np.float32))
    if not bool(torch.isfinite(noise).all()):
        raise ValueError(f"--noise {path}: holds NaN or inf; expected finite noise")
    return noise


@torch.inference_mode()
def generate(
    model: Model,
    steps: int,
    noise: Tensor,
    class_label: int | None = None,
    guidance: float = 1.0,
    sampler: str = "flowmap",
    gamma: float = 1.0,
    seed: int = 0,
    keys: Tensor | None = None,
) -> Tensor:
    """Map t=1 noise [N, *shape] to samples in model space with `steps` steps of `sampler`.
    "stochastic" re-noises row i from per-sample Philox noise keyed by keys[i] (default
    sample_keys(seed, N), as the server's "consistency" sampler does)."""
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    if sampler not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLER_NAMES)}")
    y = labels(model, len(noise), class_label)
    u = guided(model.net, guidance, model.num_classes) if y is not None else model.net
    grid = uniform_grid(steps)
    if sampler == "stochastic":
        interp = get_interpolant(model.config.get("interpolant", "linear"))
        fresh = renoise_draws(sample_keys(seed, len(noise)) if keys is None else keys, noise.shape)
        return sample_stochastic(u, noise, grid, y, gamma=gamma, interpolant=interp, noise=fresh)
    return {"flowmap": sample_flowmap, "euler": sample_euler, "heun": sample_heun}[sampler](u, noise, grid, y)


def renoise_draws(keys: Tensor, shape) -> Callable[[int], Tensor]:
    """noise(k): standard normals `shape` for step k, row i from Philox keyed by keys[i] with counter
    (element, k): the draws of kernels.fused_step's re-noise path, on CPU its bit-exact reference."""
    import kernels

    n = math.prod(shape[1:])
    return lambda k: kernels.noise(keys, k, n).reshape(shape)


def generate_seeded(model: Model, steps: int, n: int, seed: int, **kwargs) -> Tensor:
    return generate(model, steps, make_noise(n, model.shape, seed), seed=seed, **kwargs)
