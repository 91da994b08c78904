"""The playground: the page at / (HTML, JS and CSS from server/api_process/static, no build step, nothing
external) and GET /v1/stats, the JSON latency summary its live chart polls.

/v1/stats turns the request-latency histogram that /metrics exports (summed over every API process)
into count, p50 and p99 per model and step count, estimated from the buckets the way Prometheus'
histogram_quantile does: linear within the bucket that holds the rank. Pure functions over plain data
(server.common.metrics hands the buckets over); no torch, no prometheus_client here.
"""

from __future__ import annotations

import math
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

STATIC = Path(__file__).parent / "static"
STATS_ERRORS = {401: {"description": "missing or wrong API key (when the server has one)"}}
QUANTILES = {"p50_ms": 0.5, "p99_ms": 0.99}
# the page may load only what this server sends: no CDN, no inline script, images only from data: URLs
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class StepLatency(BaseModel):
    steps: int
    count: int = Field(description="Successful requests (status 200) at this step count.")
    p50_ms: float | None = Field(description="Median latency, estimated from the histogram buckets.")
    p99_ms: float | None = Field(
        description="99th percentile (the highest finite bucket bound when it falls beyond it)."
    )


class ModelLatency(BaseModel):
    model: str
    by_steps: list[StepLatency]


class Stats(BaseModel):
    models: list[ModelLatency]
    bucket_bounds_ms: list[float] = Field(description="Upper bounds of the histogram buckets.")


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The q-quantile of a cumulative histogram {upper bound: count <= bound} (with +Inf), linear within
    the bucket holding rank q * total (the first bucket starts at 0); None when it holds nothing."""
    bounds = sorted(buckets)
    total = buckets.get(math.inf, buckets[bounds[-1]] if bounds else 0.0)
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank and count > below:
            if math.isinf(le):
                return lower  # beyond the last finite bound: that bound, as Prometheus says
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = (le if not math.isinf(le) else lower), count
    return lower


def summarize(histograms: dict[tuple[str, str], dict[float, float]], models: list[str]) -> Stats:
    """Stats for `models` (in that order) from (model, steps) -> cumulative buckets in seconds."""
    out, bounds = [], set()
    for name in models:
        rows = []
        for (model, steps), buckets in histograms.items():
            if model != name or not steps.isdigit():
                continue
            bounds.update(b for b in buckets if not math.isinf(b))
            ms = {k: histogram_quantile(q, buckets) for k, q in QUANTILES.items()}
            ms = {k: None if v is None else round(1e3 * v, 3) for k, v in ms.items()}
            rows.append(StepLatency(steps=int(steps), count=int(buckets.get(math.inf, 0)), **ms))
        out.append(ModelLatency(model=name, by_steps=sorted(rows, key=lambda r: r.steps)))
    return Stats(models=out, bucket_bounds_ms=[1e3 * b for b in sorted(bounds)])


def include(app: FastAPI, service, metrics, auth: list) -> None:
    """Add the page (/, /static/...) and GET /v1/stats (behind the API key when one is set) to `app`."""
    r = APIRouter()

    @r.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    @r.get("/v1/stats", response_model=Stats, dependencies=auth, responses=STATS_ERRORS)
    async def stats():
        """Latency of successful requests per model and step count since the server started (every API
        process), p50/p99 estimated from the flowmap_request_duration_seconds buckets."""
        histograms = metrics.latency_buckets() if metrics is not None else {}
        return summarize(histograms, list(service.entries))

    app.include_router(r)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
