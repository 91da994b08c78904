"""The playground's server side: the page and its assets at / and /static, and GET /v1/stats, whose
p50/p99 are estimated from the request-latency histogram buckets (checked against known distributions)."""

from __future__ import annotations

import asyncio
import math
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from server.api_process.app import create_app
from server.api_process.playground import histogram_quantile, summarize
from server.api_process.service import Service
from server.common.metrics import LATENCY_BUCKETS, Metrics
from server.common.settings import ServerSettings
from server.common.stats import RequestStats
from tests.unit.server.test_service_app import InProcessCore, states


def buckets_of(seconds, status: int = 200, model: str = "m", steps: int = 1) -> dict[float, float]:
    """Observe `seconds` into a real Metrics histogram and read its buckets back as the route does."""
    metrics = Metrics()
    for s in seconds:
        metrics.request(RequestStats(model, steps, status, float(s)))
    return metrics.latency_buckets()[(model, str(steps))]


def bucket_of(v: float) -> tuple[float, float]:
    """(lower, upper] bounds of the LATENCY_BUCKETS bucket holding v."""
    lower = 0.0
    for le in LATENCY_BUCKETS:
        if v <= le:
            return lower, le
        lower = le
    return lower, math.inf


def test_uniform_over_whole_buckets_is_recovered_exactly():
    # uniform on (0, 0.256]: linear interpolation within each bucket is exact, so q -> q * 0.256
    x = (np.arange(25600) + 0.5) / 1e5
    b = buckets_of(x)
    for q in (0.1, 0.5, 0.9, 0.99):
        assert histogram_quantile(q, b) == pytest.approx(q * 0.256, rel=1e-3), q


@pytest.mark.parametrize("q", [0.5, 0.99])
def test_a_skewed_distribution_lands_in_the_bucket_of_its_true_quantile(q):
    rng = np.random.default_rng(0)
    x = rng.lognormal(mean=math.log(0.01), sigma=1.0, size=20000)  # median 10 ms, p99 about 102 ms
    est, true = histogram_quantile(q, buckets_of(x)), float(np.quantile(x, q))
    lower, upper = bucket_of(true)
    assert lower <= est <= upper, (q, est, true)
    assert abs(est - true) / true < 0.5  # and no further off than the bucket's width allows


def test_edges_empty_beyond_the_last_bound_and_first_bucket():
    assert histogram_quantile(0.5, {}) is None
    assert histogram_quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None
    # everything slower than the last finite bound: that bound (as Prometheus' histogram_quantile)
    assert histogram_quantile(0.99, buckets_of([60.0] * 10)) == LATENCY_BUCKETS[-1]
    # all in the first bucket (0, 1 ms]: interpolated from 0
    assert histogram_quantile(0.5, buckets_of([0.0005] * 4)) == pytest.approx(0.0005)


def test_summary_per_model_and_steps_counts_only_successes():
    metrics = Metrics()
    for s, steps in [(0.010, 1), (0.011, 1), (0.030, 4)]:
        metrics.request(RequestStats("a", steps, 200, s))
    metrics.request(RequestStats("a", 1, 429, 5.0))  # refused: not in the chart
    metrics.request(RequestStats("a", None, 422, 5.0))  # no step count
    metrics.request(RequestStats("b", 2, 200, 0.5))
    stats = summarize(metrics.latency_buckets(), ["a", "b", "c"])
    a, b, c = stats.models
    assert [(r.steps, r.count) for r in a.by_steps] == [(1, 2), (4, 1)]
    assert 8 < a.by_steps[0].p50_ms <= 16 and 16 < a.by_steps[1].p99_ms <= 32
    assert [(r.steps, r.count) for r in b.by_steps] == [(2, 1)] and c.by_steps == []
    assert stats.bucket_bounds_ms[0] == 1.0 and stats.bucket_bounds_ms[-1] == 30000.0


def app_client(key: str | None = None):
    settings = ServerSettings(max_steps=4, max_samples=16, request_timeout_ms=2000, api_key=key)
    metrics = Metrics()
    service = Service(settings, [InProcessCore(settings)], metrics)
    service.on_states(states(True))
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(service, metrics)), base_url="http://t"
    )
    return SimpleNamespace(client=client, metrics=metrics)


def test_stats_route_reports_the_requests_served():
    async def go(c):
        for steps in (1, 1, 3):
            r = await c.post("/v1/generate", json={"steps": steps, "num_samples": 2, "output": "npy"})
            assert r.status_code == 200, r.text
        bad = await c.post("/v1/generate", json={"steps": 2, "class_label": 99})  # 422: not counted
        assert bad.status_code == 422
        return (await c.get("/v1/stats")).json()

    stats = asyncio.run(go(app_client().client))
    (toy,) = stats["models"]
    assert toy["model"] == "toy"
    assert [(r["steps"], r["count"]) for r in toy["by_steps"]] == [(1, 2), (3, 1)]
    assert all(0 < r["p50_ms"] <= r["p99_ms"] <= 30000 for r in toy["by_steps"])


def test_page_and_assets_are_served_without_a_key_and_stats_need_it():
    async def go(c):
        page, js, css = await c.get("/"), await c.get("/static/app.js"), await c.get("/static/style.css")
        return page, js, css, await c.get("/v1/stats"), await c.get("/v1/stats", headers={"X-API-Key": "k"})

    page, js, css, no_key, with_key = asyncio.run(go(app_client(key="k").client))
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/static/app.js"' in page.text and "http" not in page.text.split("<body>")[0]
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert no_key.status_code == 401 and with_key.status_code == 200
