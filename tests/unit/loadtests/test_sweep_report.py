"""The sweep's goal arithmetic on hand-made rows: the 4-step knee, auto's goodput ratio and attainment."""

from __future__ import annotations

import pytest

from loadtests import sweep_report


def row(steps, rate, attainment, goodput, fd=None, n=1000):
    return {
        "steps": steps,
        "rate": rate,
        "attainment": attainment,
        "goodput_rps": goodput,
        "quality": {"fd": fd, "n": n},
    }


def test_knee_is_the_lowest_load_below_the_limit():
    rows = [row("4", 100, 1.0, 100), row("4", 300, 0.5, 150), row("4", 200, 0.89, 178)]
    assert sweep_report.knee(rows) == 200
    assert sweep_report.knee(rows[:1]) is None


def test_goals_of_a_repeat():
    rows = [row("4", r, a, g) for r, a, g in [(100, 1.0, 100), (200, 0.5, 100), (400, 0.1, 40)]]
    rows += [
        row("auto", r, a, g, fd)
        for r, a, g, fd in [(100, 1.0, 100, 5), (200, 0.995, 199, 6), (400, 0.98, 392, 9)]
    ]
    g = sweep_report.goals_of_repeat(rows)
    assert g["l90"] == 200
    assert g["goodput_ratio"] == 199 / 100
    assert g["worst_attainment_to_2x"] == 0.98  # up to 2 x 200 = 400 included
    assert g["fd_monotone"] is True
    assert g["top"] == (400, 392 / 40)  # the highest load both were offered: where the trade shows
    report = sweep_report.goals({"rows": [{**r, "repeat": 0} for r in rows]})
    assert "9.80x at 400 req/s, 2.0x L90" in "\n".join(report)
    assert sweep_report.goals_of_repeat(rows[:2] + rows[3:5])["top"] == (200, 1.99)  # no common 400
    assert sweep_report.goals_of_repeat(rows[:3])["top"] is None  # no auto at all
    rows[2]["goodput_rps"] = 0.0  # fixed 4 steps met nothing there
    assert sweep_report.goals_of_repeat(rows)["top"] == (400, float("inf"))
    rows[-1]["quality"]["fd"] = 4.0  # FD falls with load: not a smooth rise
    assert sweep_report.goals_of_repeat(rows)["fd_monotone"] is False
    assert sweep_report.goals_of_repeat(rows, noise=0.25)["fd_monotone"] is True  # 9 -> 4: within 2.8 x 25%


def test_fd_trend_compares_only_points_scored_on_the_same_number_of_samples():
    rows = [row("4", r, a, g) for r, a, g in [(100, 1.0, 100), (200, 0.5, 100)]]
    # the low-load point kept 300 samples: its FD carries more small-sample bias, not worse quality
    rows += [row("auto", 100, 1.0, 100, 9.0, n=300), row("auto", 200, 1.0, 200, 5.0)]
    rows += [row("auto", 400, 0.99, 390, 5.5)]
    assert sweep_report.goals_of_repeat(rows)["fd_monotone"] is True
    rows[2]["quality"]["n"] = 1000  # scored on the full pool, a fall from 9 to 5 is a fall
    assert sweep_report.goals_of_repeat(rows)["fd_monotone"] is False


def test_agreement_with_eval_is_judged_in_seed_noise_units():
    eval_fds, n = [4.0, 5.0, 6.0], [1000, 1000]  # sd 1.0
    assert sweep_report.agree([6.5, 7.5], eval_fds, n, [1000]) == "yes (2.0 sd)"
    assert sweep_report.agree([7.5, 7.5], eval_fds, n, [1000]).startswith("**no**")
    assert sweep_report.agree([5.0], eval_fds, [100], [1000]).startswith("n/a (scored at most 100")
    # only the points scored on eval's count are compared: the small-sample point's high FD is left out
    assert sweep_report.agree([6.5, 30.0], eval_fds, [1000, 300], [1000]) == (
        "yes (1.5 sd; 1 of 2 points at eval's count)"
    )


def test_main_has_a_usage_and_names_a_missing_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        sweep_report.main(["--help"])
    assert e.value.code == 0 and "sweep.json" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        sweep_report.main([str(tmp_path / "nope.json")])
    assert e.value.code == 2 and "nope.json: no such file" in capsys.readouterr().err
