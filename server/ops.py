"""The two tensor ops of the serving path, chosen in ONE place: Triton kernels when importable, else torch.

`step(x, u, s, t)` is the flow-map jump X_{s,t}(x) = x + (t - s) * u with per-sample s, t: [B];
`to_uint8_nhwc(x)` is the DESIGN.md PNG rule on x: [B, C, H, W] returning uint8 [B, H, W, C] numpy.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from flowmap.data import to_uint8
from flowmap.interpolants import expand


def _reference_step(x: Tensor, u: Tensor, s: Tensor, t: Tensor) -> Tensor:
    """Same arithmetic as flowmap.samplers.flow_step (so server == CLI bit-for-bit given the same u)."""
    return x + expand(t - s, x) * u


def _reference_postprocess(x: Tensor) -> np.ndarray:
    return np.ascontiguousarray(to_uint8(x).transpose(0, 2, 3, 1))  # [B, H, W, C]


def _numpy_postprocess(x: Tensor) -> np.ndarray:
    """The same rule in numpy for CPU tensors (float32 arithmetic, np.rint = round half to even, NaN -> 0):
    bit-identical to kernels.reference.postprocess_ref and ~10x cheaper for a handful of 8x8 images."""
    a = x.detach().float().numpy()
    a = np.where(np.isnan(a), np.float32(-1.0), a)
    q = np.rint((np.clip(a, np.float32(-1.0), np.float32(1.0)) + np.float32(1.0)) * np.float32(127.5))
    return np.ascontiguousarray(q.astype(np.uint8).transpose(0, 2, 3, 1))  # [B, H, W, C]


def _pick():
    """(step, postprocess, backend): kernels.fused_step / kernels.postprocess when that package has them."""
    try:
        import kernels
    except ImportError:
        return _reference_step, _reference_postprocess, "torch"
    fused, post = getattr(kernels, "fused_step", None), getattr(kernels, "postprocess", None)
    if fused is None or post is None:
        return _reference_step, _reference_postprocess, "torch"

    def kernel_post(x: Tensor) -> np.ndarray:
        if x.device.type == "cpu":  # the kernels' CPU path is the torch reference: numpy is cheaper
            return _numpy_postprocess(x)
        out = post(x)
        return out.cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)

    return fused, kernel_post, "kernels"


_STEP, _POST, BACKEND = _pick()


def step(x: Tensor, u: Tensor, s: Tensor, t: Tensor) -> Tensor:
    """x_next = x + (t - s) * u; x, u: [B, ...], s, t: [B]."""
    return _STEP(x, u, s, t)


def to_uint8_nhwc(x: Tensor) -> np.ndarray:
    """x: [B, C, H, W] model space -> uint8 [B, H, W, C]."""
    return _POST(x)
