"""A small x-y line plot (Pillow, no matplotlib): training curves, Pareto fronts, rate vs cost."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from flowmap.plots import draw_series

W, H, LEFT, RIGHT, TOP, BOTTOM = 900, 540, 80, 260, 40, 50


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    if log:
        return [10.0**e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)]
    raw = max(hi - lo, 1e-12) / 8
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)  # at most ~8 gridlines
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _scale(lo: float, hi: float, log: bool, a: float, b: float):
    f = math.log10 if log else (lambda v: v)
    flo, fhi = f(lo), f(hi)
    span = (fhi - flo) or 1.0
    return lambda v: a + (b - a) * (f(v) - flo) / span


def _range(vals: list[float], log: bool) -> tuple[float, float]:
    lo, hi = min(vals), max(vals)
    if log:
        return 10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi))
    pad = 0.05 * ((hi - lo) or abs(hi) or 1.0)
    return lo - pad, hi + pad


def plot_xy(
    lines: dict[str, list[tuple[float, float]]],
    path: str | Path,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
) -> Path:
    """One polyline with markers per label; a legend on the right."""
    xs = [x for pts in lines.values() for x, _ in pts]
    ys = [y for pts in lines.values() for _, y in pts]
    (x0, x1), (y0, y1) = _range(xs, logx), _range(ys, False)
    x_of, y_of = _scale(x0, x1, logx, LEFT, W - RIGHT), _scale(y0, y1, False, H - BOTTOM, TOP)
    img = Image.new("RGB", (W, H), "white")
    draw, font = ImageDraw.Draw(img), ImageFont.load_default()
    draw.rectangle([LEFT, TOP, W - RIGHT, H - BOTTOM], outline="black")
    for v in _ticks(x0, x1, logx):
        draw.line([(x_of(v), TOP), (x_of(v), H - BOTTOM + 4)], fill="#dddddd")
        draw.text((x_of(v) - 8, H - BOTTOM + 8), f"{v:g}", fill="black", font=font)
    for v in _ticks(y0, y1, False):
        draw.line([(LEFT - 4, y_of(v)), (W - RIGHT, y_of(v))], fill="#dddddd")
        draw.text((8, y_of(v) - 6), f"{v:.4g}", fill="black", font=font)
    draw.text(
        ((W - RIGHT + LEFT) // 2 - 60, H - 20), xlabel + (" (log)" if logx else ""), fill="black", font=font
    )
    draw.text((LEFT, 12), title or f"{ylabel} vs {xlabel}", fill="black", font=font)
    return draw_series(img, draw, font, lines, x_of, y_of, path, right=RIGHT)
