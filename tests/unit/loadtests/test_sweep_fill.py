"""--fill: a sweep point runs long enough for its samples to fill the scored pool at every offered load."""

from __future__ import annotations

import pytest

from loadtests import sweep
from loadtests.mix import load_mix


def args(*extra: str, classes: int = 10):
    a = sweep.parse(["--per-class", "100", "--seconds", "6", *extra])
    a.classes = classes
    return a


def test_without_fill_every_point_runs_seconds():
    mix = load_mix("sweep_mnist")
    assert sweep.point_seconds(mix, 2.0, args()) == 6.0


def test_fill_covers_the_pool_at_low_load_and_keeps_seconds_at_high_load():
    mix = load_mix("sweep_mnist")  # 8-sample requests
    # 1000 samples (100 of 10 classes) at 2 req/s x 8 samples: 62.5 s, with 25% spare
    assert sweep.point_seconds(mix, 2.0, args("--fill")) == pytest.approx(78.125)
    assert sweep.point_seconds(mix, 200.0, args("--fill")) == 6.0  # filled within --seconds anyway
    assert sweep.point_seconds(mix, 0.1, args("--fill", "--max-seconds", "90")) == 90.0
    assert sweep.point_seconds(mix, 2.0, args("--fill", classes=0)) == pytest.approx(7.8125)  # one pool


@pytest.mark.parametrize("flag", ["--seconds", "--max-seconds", "--per-class"])
def test_non_positive_durations_and_pools_are_refused(flag, capsys):
    with pytest.raises(SystemExit):
        sweep.parse([flag, "0"])
    assert f"{flag} must be > 0" in capsys.readouterr().err


def test_a_filled_point_plans_its_arrivals_for_the_longer_run(monkeypatch):
    """cell() schedules --warmup + point_seconds of arrivals (the open-loop plan is the point's length)."""
    planned = []

    class Stop(Exception):
        pass

    def plan_mix(mix, rate, seconds, *rest):
        planned.append(seconds)
        raise Stop

    monkeypatch.setattr(sweep.openloop, "plan_mix", plan_mix)
    mix = load_mix("sweep_mnist")
    for a in (args(), args("--fill")):
        with pytest.raises(Stop):
            sweep.cell("http://127.0.0.1:1", mix, 4, 2.0, a, seed=0)
    assert planned == [7.0, pytest.approx(1.0 + 78.125)]
