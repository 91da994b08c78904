"""Response encoders: the hand-written PNG decodes (with Pillow) to the DESIGN.md pixels; .npy round-trips."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from flowmap.data import to_uint8
from server.api_process.encode import QUALITY_DEFAULT, images, npy_base64, png_images, quality_problem
from server.common.spec import is_image


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png_decodes_to_the_design_rule(channels):
    x = torch.randn(3, channels, 8, 5) * 1.5  # values beyond [-1, 1] are clipped
    got = np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(s)))) for s in png_images(x)])
    ref = to_uint8(x).transpose(0, 2, 3, 1)  # [N, H, W, C]
    np.testing.assert_array_equal(got.reshape(ref.shape), ref)


def test_npy_round_trip_and_image_shapes():
    x = torch.randn(4, 2)
    back = np.load(io.BytesIO(base64.b64decode(npy_base64(x))), allow_pickle=False)
    assert back.dtype == np.float32 and np.array_equal(back, x.numpy())
    assert is_image([1, 8, 8]) and is_image([3, 4, 4]) and not is_image([2]) and not is_image([2, 8, 8])


def test_cpu_post_processing_is_bit_identical_to_the_kernel_reference():
    from kernels.reference import postprocess_ref
    from server.api_process.encode import to_uint8_nhwc

    x = torch.randn(16, 3, 8, 8) * 2
    x.view(-1)[:256] = (torch.arange(256) + 0.5) / 127.5 - 1  # every half-way tie: round half to even
    x.view(-1)[300] = float("nan")
    np.testing.assert_array_equal(to_uint8_nhwc(x), postprocess_ref(x).numpy())


def test_png_is_lossless_for_large_images_too():
    x = torch.rand(1, 3, 200, 120) * 2 - 1  # above the level-1 threshold: level 6
    got = np.asarray(Image.open(io.BytesIO(base64.b64decode(png_images(x)[0]))))
    np.testing.assert_array_equal(got, to_uint8(x)[0].transpose(1, 2, 0))


@pytest.mark.parametrize(("fmt", "pil"), [("webp", "WEBP"), ("jpeg", "JPEG")])
@pytest.mark.parametrize("channels", [1, 3])
def test_lossy_formats_decode_near_the_design_pixels(fmt, pil, channels):
    n, c, h, w = torch.meshgrid(*map(torch.arange, (2, channels, 28, 28)), indexing="ij")
    x = 0.8 * torch.sin(h / 5 + c + n) * torch.cos(w / 7)  # smooth: what lossy codecs keep
    ref = to_uint8(x).transpose(0, 2, 3, 1).astype(int)  # [N, H, W, C]
    mode = "L" if channels == 1 else "RGB"
    got = []
    for b64 in images(x, fmt, quality=100):
        im = Image.open(io.BytesIO(base64.b64decode(b64)))
        assert im.format == pil and im.size == (28, 28)
        assert im.mode == (mode if fmt == "jpeg" else "RGB")  # WebP has no grey mode: it decodes as RGB
        got.append(np.asarray(im.convert(mode)))
    got = np.stack(got)
    assert np.abs(got.reshape(ref.shape) - ref).mean() < 4


@pytest.mark.parametrize("fmt", ["webp", "jpeg"])
def test_quality_trades_bytes(fmt):
    x = torch.rand(1, 1, 28, 28) * 2 - 1
    sizes = [len(base64.b64decode(images(x, fmt, quality=q)[0])) for q in (10, 90)]
    assert sizes[0] < sizes[1]
    assert images(x, fmt) == images(x, fmt, quality=QUALITY_DEFAULT)


def test_png_output_is_the_hand_written_encoder_and_jpeg_drops_alpha():
    x = torch.rand(2, 4, 8, 8) * 2 - 1
    assert images(x, "png") == png_images(x)
    im = Image.open(io.BytesIO(base64.b64decode(images(x, "jpeg")[0])))
    assert im.mode == "RGB"
    assert quality_problem("png", 80) and quality_problem("npy", 1) and quality_problem("webp", 80) is None
    assert quality_problem("png", None) is None
