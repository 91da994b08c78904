"""loadtests.overload: the open-loop plan it sends and the report it prints, from known inputs."""

from __future__ import annotations

import json

from loadtests import overload


def test_plan_sends_one_shape_with_a_distinct_seed_each_at_poisson_times():
    p = overload.plan("http://127.0.0.1:9/", {"num_samples": 8, "steps": 4}, rate=200, seconds=2, seed=3)
    assert 300 < len(p.at) < 500 and (p.at >= 0).all() and (p.at < 2).all()
    seeds = [b["seed"] for b in p.bodies]
    assert len(set(seeds)) == len(seeds) and all(b["steps"] == 4 for b in p.bodies)
    head, _, body = p.requests[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/generate HTTP/1.1") and json.loads(body) == p.bodies[0]


def test_report_has_a_row_per_phase_and_the_probes_per_phase():
    phase = {
        "rate": 10.0,
        "sent": 80,
        "statuses": {"200": 60, "429": 20},
        "ok_p50_ms": 5.0,
        "ok_p99_ms": 9.0,
        "refused_p50_ms": 1.0,
        "refused_p99_ms": 2.0,
        "refused_max_ms": 3.0,
        "ok_per_s": 7.5,
        "mean_batch": 64.0,
        "lag_p99_ms": 0.5,
    }
    r = {
        "body": {"num_samples": 8},
        "factor": 4.0,
        "capacity": {"req_s": 10.0, "p50_ms": 4.0, "p99_ms": 8.0, "generator": "wrk"},
        "at_capacity": phase,
        "overload": phase | {"statuses": {"200": 10, "429": 70}},
        "after": phase,
        "api_flood": {"req_s": 100.0, "p50_ms": 50.0, "p99_ms": 90.0, "errors": {}},
    }
    fast = {"probes": 100, "failed": 0, "p50_ms": 0.5, "p99_ms": 2.0, "max_ms": 3.0}
    slow = {"probes": 100, "failed": 1, "p50_ms": 5.0, "p99_ms": 40.0, "max_ms": 60.0}
    own = {"probes": 100, "failed": 0, "p50_ms": 0.2, "p99_ms": 1.0, "max_ms": 1.5}
    r["healthz"] = {"overload": {"/healthz": fast, "/v2/health/live": slow, overload.PORT_PROBE: own}}
    r["capacity"] |= {"connections": 8, "not_2xx": 0}
    text = overload.report(r)
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "phase" not in ln]
    assert len(rows) == 4 and "| 4x capacity | 10.0 | 80 | 5.0 | 9.0 | 70 |" in text
    cells = ["0.5 / 2.0 / 3.0 (0 of 100)", "5.0 / 40.0 / 60.0 (1 of 100)", "0.2 / 1.0 / 1.5 (0 of 100)"]
    assert "| overload | " + " | ".join(cells) + " |" in text


def test_probe_stats_count_only_the_window_and_failures_apart():
    samples = [(0.5, 1.0), (1.0, 2.0), (1.5, None), (2.0, 4.0), (3.0, 100.0)]
    s = overload.probe_stats(samples, 1.0, 2.0)
    assert s["probes"] == 3 and s["failed"] == 1 and s["max_ms"] == 4.0 and s["p50_ms"] == 3.0
