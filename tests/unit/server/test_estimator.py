"""server.common.estimator: the iteration timer and the result's way back, against known inputs."""

from __future__ import annotations

import pytest

from server.common.estimator import CallTimer, ReportedWait, ReturnPath


def test_the_way_back_learns_a_high_quantile_and_is_capped():
    path = ReturnPath(alpha=0.1, k=2.0, cap=0.5)
    assert path.margin(1.0) == 0.0  # nothing observed: reserve nothing
    for i in range(400):
        path.observe(0.010 if i % 2 else 0.030)  # mean 20 ms, absolute deviation 10 ms
    assert path.mean == pytest.approx(0.020, abs=0.002)
    assert path.margin(1.0) == pytest.approx(0.040, abs=0.004)  # mean + 2 deviations
    assert path.margin(0.050) == pytest.approx(0.025)  # at most half of what is left
    assert path.margin(-1.0) == 0.0


def test_the_way_back_ignores_impossible_observations():
    path = ReturnPath()
    for bad in (-0.001, 120.0):
        path.observe(bad)
    assert path.mean is None
    path.observe(0.005)
    assert path.margin(1.0) == pytest.approx(0.005)


def test_the_call_timer_interpolates_and_extrapolates():
    timer = CallTimer(alpha=0.5)
    timer.observe(1, 0.001)
    timer.observe(9, 0.009)
    assert timer.predict(5) == pytest.approx(0.005)
    assert timer.predict(18) == pytest.approx(0.018)  # beyond the largest: proportional


def test_reported_wait_ages_in_real_time_and_keeps_the_newest_report():
    w = ReportedWait()
    assert w.now(100.0) == 0.0  # nothing reported: nothing to shed by
    w.observe(0.3, at=10.0)
    assert w.now(10.1) == pytest.approx(0.2) and w.now(11.0) == 0.0  # the queue drains as time passes
    w.observe(0.9, at=9.0)  # an older report arriving late changes nothing
    assert w.now(10.0) == pytest.approx(0.3)
    w.observe(0.05, at=10.5)
    assert w.now(10.5) == pytest.approx(0.05)


def test_a_stale_reported_wait_sheds_nothing():
    """Several API processes: a large wait reported to this one, then the core drained (another process's
    requests ended) and reported only to others. Shedding by the old value for seconds would keep this
    process from ever asking the idle core again: only a fresh report sheds."""
    clock = 10.0  # a fake clock
    w = ReportedWait(fresh=0.1)
    w.observe(5.0, at=clock)
    clock += 0.05
    assert w.now(clock) == pytest.approx(4.95)  # fresh: aged by the time since
    clock += 0.1
    assert w.now(clock) == 0.0  # stale: the request goes to the core, whose answer refreshes the view
    w.observe(0.0, at=clock)  # ... and the idle core says so
    assert w.now(clock + 0.01) == 0.0
