"""loadtests.cancel: the histogram it reads from a /metrics text, its quantiles and its report."""

from __future__ import annotations

import pytest

from loadtests import cancel

METRICS = """# HELP flowmap_cancel_free_seconds x
flowmap_cancel_free_seconds_bucket{le="0.01",model="mnist"} 2.0
flowmap_cancel_free_seconds_bucket{le="0.02",model="mnist"} 6.0
flowmap_cancel_free_seconds_bucket{le="0.04",model="mnist"} 10.0
flowmap_cancel_free_seconds_bucket{le="+Inf",model="mnist"} 10.0
flowmap_cancel_free_seconds_count{model="mnist"} 10.0
flowmap_cancel_free_seconds_sum{model="mnist"} 0.15
flowmap_cancel_free_seconds_bucket{le="0.01",model="digits"} 5.0
flowmap_cancel_free_seconds_count{model="digits"} 5.0
"""


def test_histogram_reads_one_models_series():
    h = cancel.histogram(METRICS, "flowmap_cancel_free_seconds", "mnist")
    assert h["buckets"] == {0.01: 2.0, 0.02: 6.0, 0.04: 10.0, float("inf"): 10.0}
    assert h["count"] == 10.0 and h["sum"] == pytest.approx(0.15)
    assert cancel.histogram(METRICS, "flowmap_cancel_free_seconds", "gmm8")["count"] == 0.0


def test_quantiles_interpolate_inside_buckets_as_prometheus_does():
    h = cancel.histogram(METRICS, "flowmap_cancel_free_seconds", "mnist")
    assert cancel.quantile(h, 0.5) == pytest.approx(0.0175)  # rank 5: 3/4 into (0.01, 0.02]
    assert cancel.quantile(h, 0.1) == pytest.approx(0.005)
    assert cancel.quantile(h, 1.0) == pytest.approx(0.04)
    beyond = {"buckets": {0.01: 1.0, float("inf"): 4.0}, "sum": 9.0, "count": 4.0}
    assert cancel.quantile(beyond, 0.99) == 0.01  # in +Inf: the last finite bound
    assert cancel.quantile({"buckets": {}, "sum": 0.0, "count": 0.0}, 0.5) is None


def test_delta_counts_only_what_happened_between_two_reads():
    before = {"buckets": {0.01: 1.0}, "sum": 0.005, "count": 1.0}
    after = {"buckets": {0.01: 3.0, 0.02: 4.0}, "sum": 0.035, "count": 4.0}
    d = cancel.delta(after, before)
    assert d == {"buckets": {0.01: 2.0, 0.02: 4.0}, "sum": pytest.approx(0.03), "count": 3.0}


def test_report_compares_the_time_to_free_with_a_step():
    r = {
        "body": {"num_samples": 8, "steps": 4},
        "rate": 6.0,
        "load": {
            "sent": 10,
            "statuses": {"200": 10},
            "ok_p50_ms": 100.0,
            "ok_p99_ms": 200.0,
            "mean_batch": 8.0,
        },
        "given_up": 20,
        "freed": 12,
        "free_ms": {"mean": 12.0, "p50": 11.0, "p90": 20.0, "p99": 24.0},
        "call_ms": {"mean": 24.0, "p50": 24.0, "p99": 30.0},
    }
    text = cancel.report(r)
    assert "| cancel -> rows dropped | 12.0 | 11.0 | 20.0 | 24.0 |" in text
    assert "p99 time to free / p99 step: 0.80x; mean / mean step: 0.50x" in text


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        cancel.main(["--after", "0.2", "0.1"])
    assert "--after LO HI" in capsys.readouterr().err
