"""The two tensor ops of the serving path, chosen in ONE place: Triton kernels for device tensors when
importable; plain torch / numpy for CPU tensors (where the kernels would only run their references).

`step(x, u, s, t)` is the flow-map jump X_{s,t}(x) = x + (t - s) * u with per-sample s, t: [B];
`to_uint8_nhwc(x)` is the DESIGN.md PNG rule on x: [B, C, H, W] returning uint8 [B, H, W, C] numpy.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from flowmap.interpolants import expand


def _reference_step(x: Tensor, u: Tensor, s: Tensor, t: Tensor) -> Tensor:
    """Same arithmetic as flowmap.samplers.flow_step (so server == CLI bit-for-bit given the same u)."""
    return x + expand(t - s, x) * u


def _numpy_postprocess(x: Tensor) -> np.ndarray:
    """The PNG rule in numpy for CPU tensors (float32 arithmetic, np.rint = round half to even, NaN -> 0):
    bit-identical to kernels.reference.postprocess_ref and ~10x cheaper for a handful of 8x8 images."""
    a = x.detach().float().numpy()
    a = np.where(np.isnan(a), np.float32(-1.0), a)
    q = np.rint((np.clip(a, np.float32(-1.0), np.float32(1.0)) + np.float32(1.0)) * np.float32(127.5))
    return np.ascontiguousarray(q.astype(np.uint8).transpose(0, 2, 3, 1))  # [B, H, W, C]


def _pick():
    """(step, postprocess, backend) for device tensors: kernels.fused_step / kernels.postprocess when that
    package has them, else None (the CPU implementations above serve)."""
    try:
        import kernels
    except ImportError:
        return None, None, "torch"
    fused, post = getattr(kernels, "fused_step", None), getattr(kernels, "postprocess", None)
    if fused is None or post is None:
        return None, None, "torch"
    return fused, post, "kernels"


_STEP, _POST, BACKEND = _pick()


def step(x: Tensor, u: Tensor, s: Tensor, t: Tensor) -> Tensor:
    """x_next = x + (t - s) * u; x, u: [B, ...], s, t: [B]. The kernels' CPU path is a checked torch
    reference with more overhead than the plain expression, so CPU tensors take the expression."""
    if _STEP is None or x.device.type == "cpu":
        return _reference_step(x, u, s, t)
    return _STEP(x, u, s, t)


def to_uint8_nhwc(x: Tensor) -> np.ndarray:
    """x: [B, C, H, W] model space -> uint8 [B, H, W, C]."""
    if _POST is None or x.device.type == "cpu":
        return _numpy_postprocess(x)
    return _POST(x).cpu().numpy()
