"""PNG line charts for the load tests, drawn with Pillow like flowmap/plots.py (no matplotlib).

`panels(path, [Panel, ...])` stacks panels vertically; each panel has linear axes, its own series
{label: [(x, y), ...]} and a legend on the right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from flowmap.plots import PALETTE

W, PH, LEFT, RIGHT, TOP, BOTTOM = 900, 300, 70, 230, 30, 40


@dataclass
class Panel:
    title: str
    xlabel: str
    series: dict[str, list[tuple[float, float]]]
    hlines: dict[str, float] = field(default_factory=dict)  # label -> y of a grey reference line


def nice_range(lo: float, hi: float) -> tuple[float, float, float]:
    """(lo, hi, tick) covering [lo, hi] with 4-8 round ticks."""
    if not hi > lo:
        lo, hi = lo - 0.5 - abs(lo) * 0.1, hi + 0.5 + abs(hi) * 0.1
    raw = (hi - lo) / 5
    mag = 10 ** math.floor(math.log10(raw))
    tick = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return math.floor(lo / tick) * tick, math.ceil(hi / tick) * tick, tick


def _finite(pts):
    return [(x, y) for x, y in pts if x == x and y == y and abs(y) != math.inf]


def draw_panel(draw, font, top: int, p: Panel) -> None:
    pts = [pt for s in p.series.values() for pt in _finite(s)]
    ys = [y for _, y in pts] + list(p.hlines.values())
    xs = [x for x, _ in pts]
    if not pts:
        draw.text((LEFT, top + PH // 2), f"{p.title}: no data", fill="black", font=font)
        return
    x0, x1, xt = nice_range(min(xs), max(xs))
    y0, y1, yt = nice_range(min(ys), max(ys))
    bottom = top + PH - BOTTOM
    x_of = lambda x: LEFT + (W - LEFT - RIGHT) * (x - x0) / (x1 - x0)
    y_of = lambda y: bottom - (PH - TOP - BOTTOM) * (y - y0) / (y1 - y0)
    draw.rectangle([LEFT, top + TOP, W - RIGHT, bottom], outline="black")
    _ticks(draw, font, x0, x1, xt, y0, y1, yt, x_of, y_of, top, bottom)
    draw.text((LEFT, top + 10), p.title, fill="black", font=font)
    draw.text(((W - RIGHT + LEFT) // 2 - 40, bottom + 22), p.xlabel, fill="black", font=font)
    for label, y in p.hlines.items():
        draw.line([(LEFT, y_of(y)), (W - RIGHT, y_of(y))], fill="#999999", width=1)
        draw.text((LEFT + 4, y_of(y) - 12), label, fill="#666666", font=font)
    for i, (label, s) in enumerate(p.series.items()):
        color, xy = PALETTE[i % len(PALETTE)], [(x_of(x), y_of(y)) for x, y in sorted(_finite(s))]
        if len(xy) > 1:
            draw.line(xy, fill=color, width=2)
        for x, y in xy:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        ly = top + TOP + 16 * i + 6
        draw.line([(W - RIGHT + 15, ly), (W - RIGHT + 35, ly)], fill=color, width=3)
        draw.text((W - RIGHT + 40, ly - 6), label, fill="black", font=font)


def _ticks(draw, font, x0, x1, xt, y0, y1, yt, x_of, y_of, top, bottom) -> None:
    for i in range(round((x1 - x0) / xt) + 1):
        x = x0 + i * xt
        draw.line([(x_of(x), bottom), (x_of(x), bottom + 4)], fill="black")
        draw.text((x_of(x) - 8, bottom + 7), f"{x:g}", fill="black", font=font)
    for i in range(round((y1 - y0) / yt) + 1):
        y = y0 + i * yt
        draw.line([(LEFT - 4, y_of(y)), (W - RIGHT, y_of(y))], fill="#e5e5e5")
        draw.text((8, y_of(y) - 6), f"{y:g}", fill="black", font=font)


def panels(path: str | Path, ps: list[Panel]) -> Path:
    img = Image.new("RGB", (W, PH * len(ps)), "white")
    draw, font = ImageDraw.Draw(img), ImageFont.load_default()
    for i, p in enumerate(ps):
        draw_panel(draw, font, i * PH, p)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
