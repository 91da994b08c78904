"""PNG plot of quality against steps, one line per (model, sampler); drawn with Pillow (no matplotlib)."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#000000",
    "#aec7e8",
]
W, H, LEFT, RIGHT, TOP, BOTTOM = 900, 540, 70, 230, 40, 50


def series(results: list[dict], metric: str) -> dict[str, list[tuple[int, float]]]:
    """{label: [(steps, value)]}: label = model name, plus the sampler unless it is the model's own."""
    out: dict[str, list[tuple[int, float]]] = {}
    for res in results:
        own = res["rows"][0]["sampler"] if res["rows"] else None
        for row in res["rows"]:
            label = res["model"] if row["sampler"] == own else f"{res['model']} ({row['sampler']})"
            out.setdefault(label, []).append((int(row["steps"]), float(row[metric])))
    return {k: sorted(v) for k, v in out.items()}


def default_metric(results: list[dict]) -> str:
    return "rel_mse" if "rel_mse" in results[0]["rows"][0] else "fd"


def plot_quality(
    results: list[dict], path: str | Path, metric: str | None = None, floor: float | None = None
) -> Path:
    """Log-log plot of `metric` (default rel_mse for gmm8, fd for images) against steps."""
    metric = metric or default_metric(results)
    lines = series(results, metric)
    steps = sorted({s for pts in lines.values() for s, _ in pts})
    vals = [v for pts in lines.values() for _, v in pts if v > 0] + ([floor] if floor else [])
    lo, hi = math.floor(math.log10(min(vals))), math.ceil(math.log10(max(vals)))
    hi += hi == lo
    x_of = lambda s: LEFT + (W - LEFT - RIGHT) * (math.log2(s) / max(1.0, math.log2(steps[-1])))
    y_of = lambda v: TOP + (H - TOP - BOTTOM) * (hi - math.log10(max(v, 10.0**lo))) / (hi - lo)
    img = Image.new("RGB", (W, H), "white")
    draw, font = ImageDraw.Draw(img), ImageFont.load_default()
    _axes(draw, font, steps, lo, hi, x_of, y_of, metric)
    if floor:
        draw.line([(LEFT, y_of(floor)), (W - RIGHT, y_of(floor))], fill="#999999", width=1)
        draw.text((LEFT + 4, y_of(floor) - 12), "floor (train vs test)", fill="#666666", font=font)
    return draw_series(img, draw, font, lines, x_of, y_of, path)


def draw_series(img, draw, font, lines: dict, x_of, y_of, path: str | Path, right: int = RIGHT) -> Path:
    """Each series as a coloured polyline with dots, a legend in the right margin; saves img to path."""
    for i, (label, pts) in enumerate(lines.items()):
        color = PALETTE[i % len(PALETTE)]
        xy = [(x_of(x), y_of(y)) for x, y in pts]
        if len(xy) > 1:
            draw.line(xy, fill=color, width=2)
        for x, y in xy:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        draw.line(
            [(W - right + 15, TOP + 16 * i + 6), (W - right + 35, TOP + 16 * i + 6)], fill=color, width=3
        )
        draw.text((W - right + 40, TOP + 16 * i), label, fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _axes(draw, font, steps, lo, hi, x_of, y_of, metric) -> None:
    draw.rectangle([LEFT, TOP, W - RIGHT, H - BOTTOM], outline="black")
    for s in steps:
        draw.line([(x_of(s), H - BOTTOM), (x_of(s), H - BOTTOM + 4)], fill="black")
        draw.text((x_of(s) - 4, H - BOTTOM + 8), str(s), fill="black", font=font)
    for e in range(lo, hi + 1):
        y = y_of(10.0**e)
        draw.line([(LEFT - 4, y), (W - RIGHT, y)], fill="#dddddd")
        draw.text((8, y - 6), f"1e{e}", fill="black", font=font)
    draw.text(((W - RIGHT + LEFT) // 2 - 40, H - 20), "steps (log2)", fill="black", font=font)
    draw.text((LEFT, 12), f"{metric} (log10) vs steps", fill="black", font=font)
