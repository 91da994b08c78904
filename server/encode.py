"""Response payloads: one base64 PNG per sample, or one base64 .npy of float32 model-space samples."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image
from torch import Tensor

from server import ops

_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def is_image(shape: list[int]) -> bool:
    """PNG output is possible for [C, H, W] models with C in 1, 3, 4."""
    return len(shape) == 3 and shape[0] in _MODES


def png_images(x: Tensor) -> list[str]:
    """x: [N, C, H, W] model space -> N base64 PNGs (DESIGN.md rule uint8 = round((clip(x)+1)*127.5))."""
    pixels = ops.to_uint8_nhwc(x.detach().float().cpu())  # [N, H, W, C] uint8
    out = []
    for img in pixels:
        c = img.shape[-1]
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if c == 1 else img, _MODES[c]).save(buf, format="PNG")
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return out


def npy_bytes(x: Tensor) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x.detach().float().cpu().numpy(), allow_pickle=False)
    return buf.getvalue()


def npy_base64(x: Tensor) -> str:
    """x: [N, *shape] -> base64 of an .npy file holding float32 [N, *shape] (what `flowmap sample` writes)."""
    return base64.b64encode(npy_bytes(x)).decode("ascii")
