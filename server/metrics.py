"""Prometheus metrics (the only module that imports prometheus_client), fed by plain stats records."""

from __future__ import annotations

import platform

import torch
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from server.stats import IterationStats, Rejection, RequestStats

LATENCY_BUCKETS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1, 2, 5, 10, 30)
CALL_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Metrics:
    """One registry per app; names prefixed flowmap_ (documented in docs/server.md)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, version: str = "0", engine: str = "", backend: str = ""):
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        self.latency = Histogram(
            "flowmap_request_duration_seconds",
            "Request latency (arrival to response)",
            ["model", "steps", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "flowmap_queue_wait_seconds",
            "Time from submission to first admission",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.call = Histogram(
            "flowmap_engine_call_seconds",
            "One batched network call plus its step",
            ["model"],
            buckets=CALL_BUCKETS,
            registry=r,
        )
        self.batch = Histogram(
            "flowmap_batch_samples",
            "Samples advanced per network call",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("flowmap_samples_in_flight", "Samples being computed", ["model"], registry=r)
        self.depth = Gauge("flowmap_queue_depth", "Requests waiting for admission", ["model"], registry=r)
        self.nfe = Counter(
            "flowmap_network_evaluations_total",
            "Network rows evaluated (a guided sample: 2)",
            ["model"],
            registry=r,
        )
        self.failed = Counter(
            "flowmap_engine_failures_total", "Network calls that raised", ["model"], registry=r
        )
        self.rejections = Counter(
            "flowmap_rejections_total", "Requests turned away, by reason", ["reason", "model"], registry=r
        )
        info = Gauge(
            "flowmap_build_info",
            "Build information (value 1)",
            ["version", "torch", "python", "engine", "kernels"],
            registry=r,
        )
        info.labels(version, torch.__version__, platform.python_version(), engine, backend).set(1)

    def iteration(self, s: IterationStats) -> None:
        self.call.labels(s.model).observe(s.seconds)
        self.batch.labels(s.model).observe(s.samples)
        self.nfe.labels(s.model).inc(s.rows)
        self.in_flight.labels(s.model).set(s.in_flight)
        self.depth.labels(s.model).set(s.queue_depth)
        if not s.ok:
            self.failed.labels(s.model).inc()

    def request(self, s: RequestStats) -> None:
        steps = "" if s.steps is None else str(s.steps)
        self.latency.labels(s.model, steps, str(s.status)).observe(s.seconds)
        if s.queue_seconds is not None:
            self.queue_wait.labels(s.model).observe(s.queue_seconds)

    def reject(self, r: Rejection) -> None:
        self.rejections.labels(r.reason, r.model).inc()

    def queue(self, model: str, depth: int, in_flight: int) -> None:
        self.depth.labels(model).set(depth)
        self.in_flight.labels(model).set(in_flight)

    def render(self) -> bytes:
        return generate_latest(self.registry)
