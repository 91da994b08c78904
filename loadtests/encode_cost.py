"""What each output format costs the API process per image: the hand-written PNG encoder against Pillow's
PNG, WebP and JPEG, at the shipped models' sizes, base64 included (what a response carries).

    python -m loadtests.encode_cost [--batch 16] [--repeat 7]

Prints microseconds per image (the best of --repeat runs of a whole batch: the least disturbed by other
load on the machine), the ratio to the hand-written PNG encoder, and the mean bytes per image.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from server.api_process import encode

SIZES = {"digits 8x8": (1, 8, 8), "mnist 28x28": (1, 28, 28), "RGB 64x64": (3, 64, 64)}


def samples(shape, n: int, seed: int = 0) -> np.ndarray:
    """Image-like model-space samples [n, *shape]: smooth blobs in [-1, 1] with a little noise."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    centre = rng.uniform(0.3, 0.7, (n, c, 2, 1, 1))
    blob = np.exp(-((yy - centre[:, :, 0]) ** 2 + (xx - centre[:, :, 1]) ** 2) * 20)
    return (2 * blob - 1 + 0.05 * rng.standard_normal((n, c, h, w))).clip(-1, 1).astype(np.float32)


def encoders() -> dict:
    """name -> f(x [N, C, H, W]) -> N base64 strings."""
    hand = lambda x: [encode.b64(encode.png_bytes(img)) for img in encode.to_uint8_nhwc(x)]
    pil = lambda fmt, **kw: (
        lambda x: [encode.b64(encode.pillow_bytes(img, fmt, **kw)) for img in encode.to_uint8_nhwc(x)]
    )
    return {
        "png (hand-written)": hand,
        "png (Pillow, level 1)": pil("PNG", compress_level=1),
        "png (Pillow, default 6)": pil("PNG"),
        "webp q90": pil("WEBP", quality=90),
        "webp q75": pil("WEBP", quality=75),
        "jpeg q90": pil("JPEG", quality=90),
        "jpeg q75": pil("JPEG", quality=75),
    }


def best_us(f, x, repeat: int) -> float:
    f(x)  # warm
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f(x)
        times.append(time.perf_counter() - t0)
    return 1e6 * min(times) / len(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    load = os.getloadavg()[0]
    print(f"load average {load:.2f} on {os.cpu_count()} CPUs; batch {args.batch}, best of {args.repeat}")
    fs = encoders()
    for size, shape in SIZES.items():
        x = samples(shape, args.batch)
        base = best_us(fs["png (hand-written)"], x, args.repeat)
        print(f"\n{size:12s} {'us/image':>9s} {'x hand PNG':>10s} {'bytes':>7s}")
        for name, f in fs.items():
            us = base if name.startswith("png (hand") else best_us(f, x, args.repeat)
            size_b = np.mean([len(s) * 3 / 4 for s in f(x)])
            print(f"  {name:24s} {us:9.1f} {us / base:10.2f} {size_b:7.0f}")


if __name__ == "__main__":
    main()
