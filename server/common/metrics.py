"""Prometheus metrics (the only module that imports prometheus_client), fed by plain stats records.

A server is several processes (supervisor, engine cores, API processes); each records into its own
files under PROMETHEUS_MULTIPROC_DIR (set by the supervisor before any of them imports
prometheus_client), and GET /metrics on any API process renders the sum over all of them. Without that
variable (unit tests, one process) the metrics live in the Metrics object's own registry.

Labels only ever take values the server knows (served model names, steps 1..max_steps, a fixed set of
statuses and reasons): the caller maps anything else to "" before it gets here, and `request` and
`reject` check it again, so no client can mint a series.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from server.common.stats import IterationStats, Rejection, RequestStats, SteerStats

LATENCY_BUCKETS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1, 2, 5, 10, 30)
CALL_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.5)
# a cancel waits out the step running when it arrives: fractions of a 1-500 ms step
CANCEL_BUCKETS = (
    0.001,
    0.002,
    0.005,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1,
    2.5,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
STATUSES = frozenset({200, 400, 401, 404, 408, 413, 422, 429, 499, 500, 503, 504})
REASONS = frozenset(
    {"queue_full", "draining", "not_ready", "deadline", "cancelled", "unauthorized", "invalid"}
    | {"too_large", "not_found", "failed", "unavailable", "timeout"}
)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def mark_process_dead(pid: int) -> None:
    """Drop a dead process's live gauges (its counters and histograms keep counting in the totals)."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)


class Metrics:
    """Every flowmap_ series (documented in docs/server.md); safe to create in each process."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        self._request_series()
        self._engine_series()
        self.cores_up = self._gauge("flowmap_engine_cores_up", "Engine cores loaded and serving", [], "max")
        build = ["version", "torch", "python", "engine", "kernels"]
        self.info = self._gauge("flowmap_build_info", "Build information (value 1)", build, "max")

    def _hist(self, name: str, doc: str, labels: list[str], buckets) -> Histogram:
        return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)

    def _count(self, name: str, doc: str, labels: list[str]) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def _gauge(self, name: str, doc: str, labels: list[str], mode: str) -> Gauge:
        return Gauge(name, doc, labels, registry=self.registry, multiprocess_mode=mode)

    def _request_series(self) -> None:
        """What a request sees: its latency, its queue wait and depth, and refusals."""
        hist, count, gauge, model = self._hist, self._count, self._gauge, ["model"]
        self.latency = hist(
            "flowmap_request_duration_seconds",
            "Request latency (arrival to response)",
            ["model", "steps", "status"],
            LATENCY_BUCKETS,
        )
        self.queue_wait = hist(
            "flowmap_queue_wait_seconds",
            "Time from submission to first admission into a batch",
            model,
            LATENCY_BUCKETS,
        )
        self.depth = gauge("flowmap_queue_depth", "Requests waiting for admission", model, "livesum")
        self.depth_seconds = gauge(
            "flowmap_queue_depth_seconds",
            "Predicted queue wait of a request arriving now: the work queued ahead of it, in seconds",
            model,
            "livemax",
        )
        self.rejections = count(
            "flowmap_rejections_total", "Requests turned away, by reason", ["reason", "model"]
        )

    def _engine_series(self) -> None:
        """What the engine cores do: calls, batches, rows, failures and restarts."""
        hist, count, gauge, model = self._hist, self._count, self._gauge, ["model"]
        self.call = hist(
            "flowmap_engine_call_seconds", "One batched network call plus its step", model, CALL_BUCKETS
        )
        self.batch = hist("flowmap_batch_samples", "Samples advanced per network call", model, BATCH_BUCKETS)
        self.in_flight = gauge("flowmap_samples_in_flight", "Samples being computed", model, "livesum")
        self.nfe = count(
            "flowmap_network_evaluations_total", "Network rows evaluated (a guided sample: 2)", model
        )
        self.steer_nfe = count(
            "flowmap_steer_network_evaluations_total",
            "Network rows evaluated for steered requests (every particle, every step)",
            ["model", "reward"],
        )
        self.dropped = count(
            "flowmap_dropped_rows_total",
            "Rows of requests ended early (client gone, deadline) dropped at a step boundary",
            model,
        )
        self.cancel_free = hist(
            "flowmap_cancel_free_seconds",
            "From an API process cancelling a request with rows in flight to the core dropping them",
            model,
            CANCEL_BUCKETS,
        )
        self.failed = count("flowmap_engine_failures_total", "Network calls that raised", model)
        self.restarts = count(
            "flowmap_engine_core_restarts_total", "Engine-core processes restarted after they died", model
        )
        self.batch_cap = gauge(
            "flowmap_batch_cap_rows",
            "Most network rows the scheduler puts in one call (--batch-knee, measured at start-up)",
            model,
            "livemax",  # a restarted core may measure another cap: only live processes count
        )

    # ---------------------------------------------------------------- recording
    def build_info(self, version: str, engine: str, kernels: str) -> None:
        try:
            torch_version = metadata.version("torch")
        except metadata.PackageNotFoundError:
            torch_version = ""
        self.info.labels(version, torch_version, platform.python_version(), engine, kernels).set(1)

    def batch_rows(self, model: str, rows: int) -> None:
        self.batch_cap.labels(model).set(rows)

    def iteration(self, s: IterationStats) -> None:
        if s.samples:
            self.call.labels(s.model).observe(s.seconds)
            self.batch.labels(s.model).observe(s.samples)
            self.nfe.labels(s.model).inc(s.rows)
        self.in_flight.labels(s.model).set(s.in_flight)
        self.depth.labels(s.model).set(s.queue_depth)
        self.depth_seconds.labels(s.model).set(s.queue_seconds)
        if s.dropped:
            self.dropped.labels(s.model).inc(s.dropped)
        for seconds in s.freed:
            self.cancel_free.labels(s.model).observe(seconds)
        if not s.ok:
            self.failed.labels(s.model).inc()

    def steer(self, s: SteerStats) -> None:
        """reward: a built-in's name or an operator-listed spec (server.common.steer.reward_label), never
        client text."""
        self.steer_nfe.labels(s.model, s.reward).inc(s.evaluations)

    def request(self, s: RequestStats) -> None:
        steps = "" if s.steps is None else str(s.steps)
        status = str(s.status) if s.status in STATUSES else "other"
        self.latency.labels(s.model, steps, status).observe(s.seconds)
        if s.queue_seconds is not None:
            self.queue_wait.labels(s.model).observe(s.queue_seconds)

    def reject(self, r: Rejection) -> None:
        self.rejections.labels(r.reason if r.reason in REASONS else "other", r.model).inc()

    def core_restarted(self, model: str) -> None:
        self.restarts.labels(model).inc()

    def set_cores_up(self, n: int) -> None:
        self.cores_up.set(n)

    # ---------------------------------------------------------------- rendering
    def _readable(self) -> CollectorRegistry:
        """This process's registry, or (multiprocess) one that sums every process's files."""
        path = multiprocess_dir()
        if path is None:
            return self.registry
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)
        return registry

    def render(self) -> bytes:
        return generate_latest(self._readable())

    def latency_buckets(self, status: str = "200") -> dict[tuple[str, str], dict[float, float]]:
        """Request-latency histograms as plain data: (model, steps) -> {upper bound s: cumulative count}
        over requests answered with `status`, summed over every process (the same sum as /metrics)."""
        out: dict[tuple[str, str], dict[float, float]] = {}
        for family in self._readable().collect():
            if family.name != "flowmap_request_duration_seconds":
                continue
            for s in family.samples:
                if s.name.endswith("_bucket") and s.labels.get("status") == status:
                    buckets = out.setdefault((s.labels["model"], s.labels["steps"]), {})
                    le = float(s.labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + s.value
        return out
