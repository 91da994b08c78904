"""Response payloads: one base64 image per sample (PNG, WebP or JPEG), or one base64 .npy of float32
model-space samples.

numpy and Pillow only (API processes never import torch); torch CPU tensors are accepted through
np.asarray. PNG stays the hand-written encoder: at the served sizes it is several times cheaper than
Pillow's (`python -m loadtests.encode_cost`, docs/server.md); WebP and JPEG are Pillow's.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
from PIL import Image

_COLOR = {1: 0, 3: 2, 4: 6}  # PNG colour types: grey, RGB, RGBA
IMAGE_FORMATS = ("png", "webp", "jpeg")  # output formats of image models
QUALITY_DEFAULT = 90  # WebP and JPEG quality when a request gives none
_PIL = {"webp": "WEBP", "jpeg": "JPEG"}
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IEND = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(img: np.ndarray) -> bytes:
    """A minimal PNG (8-bit, filter 0, no interlace) of uint8 [H, W, C]; much cheaper than PIL when tiny."""
    h, w, c = img.shape
    rows = np.zeros((h, w * c + 1), np.uint8)  # filter byte 0 per row
    rows[:, 1:] = img.reshape(h, w * c)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, _COLOR[c], 0, 0, 0)
    idat = zlib.compress(rows.tobytes(), 1 if rows.size < 65536 else 6)  # tiny images: level 1 is as small
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _IEND


def to_uint8_nhwc(x) -> np.ndarray:
    """The DESIGN.md PNG rule uint8 = round((clip(x, -1, 1) + 1) * 127.5) on x: [B, C, H, W] -> [B, H, W, C].

    float32 arithmetic, np.rint = round half to even, NaN -> 0: bit-identical to
    kernels.reference.postprocess_ref (tests/unit/server/test_encode.py checks it)."""
    a = np.asarray(x, dtype=np.float32)
    a = np.where(np.isnan(a), np.float32(-1.0), a)
    q = np.rint((np.clip(a, np.float32(-1.0), np.float32(1.0)) + np.float32(1.0)) * np.float32(127.5))
    return np.ascontiguousarray(q.astype(np.uint8).transpose(0, 2, 3, 1))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def pillow_bytes(img: np.ndarray, fmt: str, **options) -> bytes:
    """uint8 [H, W, C] as a Pillow-encoded file (fmt: PNG, WEBP, JPEG); JPEG has no alpha: RGBA drops it."""
    im = Image.fromarray(img[..., 0] if img.shape[2] == 1 else img, _MODES[img.shape[2]])
    if fmt == "JPEG" and im.mode == "RGBA":
        im = im.convert("RGB")
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def quality_problem(fmt: str, quality: int | None) -> str | None:
    """A quality only means something for the lossy formats."""
    if quality is not None and fmt not in _PIL:
        return f"a quality applies to webp and jpeg output, not {fmt}"
    return None


def png_images(x) -> list[str]:
    """x: [N, C, H, W] model space (numpy or CPU tensor) -> N base64 PNGs."""
    pixels = to_uint8_nhwc(x)  # [N, H, W, C] uint8
    return [b64(png_bytes(img)) for img in pixels]


def images(x, fmt: str = "png", quality: int | None = None) -> list[str]:
    """x: [N, C, H, W] model space -> N base64 files in `fmt` (IMAGE_FORMATS); `quality` 1..100 for WebP
    and JPEG (default QUALITY_DEFAULT), lossy both."""
    if fmt == "png":
        return png_images(x)
    q = QUALITY_DEFAULT if quality is None else quality
    return [b64(pillow_bytes(img, _PIL[fmt], quality=q)) for img in to_uint8_nhwc(x)]


def npy_bytes(x) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(x, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def npy_base64(x) -> str:
    """x: [N, *shape] -> base64 of an .npy file holding float32 [N, *shape] (what `flowmap sample` writes)."""
    return b64(npy_bytes(x))
