"""The Locust scenario runs headless against a real server: requests succeed, stats per step count."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

from tests.integration.conftest import KEY, ROOT


def test_locust_scenario_runs_headless_without_failures(server, tmp_path):
    env = {
        **os.environ,
        "FLOWMAP_API_KEY": KEY,
        "FLOWMAP_LOAD_STEPS": "1,2",
        "FLOWMAP_LOAD_SAMPLES": "2",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests/locustfile.py"), "--host", server.url]
    cmd += ["--headless", "-u", "2", "-r", "2", "-t", "4s", "--csv", str(tmp_path / "run"), "--only-summary"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {r["Name"]: r for r in csv.DictReader(open(tmp_path / "run_stats.csv"))}
    assert int(rows["Aggregated"]["Request Count"]) > 0
    assert int(rows["Aggregated"]["Failure Count"]) == 0, done.stderr[-2000:]
    assert {"generate steps=1", "generate steps=2"} <= set(rows)


def test_locust_runs_a_mix_with_stats_per_step_count_and_keeps_samples(server, tmp_path):
    from loadtests import score

    mix = tmp_path / "mix.toml"
    mix.write_text(
        "slo_ms = 1000\n[[request]]\nsteps = 1\nnum_samples = 2\n"
        '[[request]]\nsteps = "auto"\nnum_samples = 3\ndeadline_ms = 5000\n'
    )
    env = {**os.environ, "FLOWMAP_API_KEY": KEY, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests/locustfile.py"), "--host", server.url]
    cmd += ["--headless", "-u", "2", "-r", "2", "-t", "4s", "--csv", str(tmp_path / "run"), "--only-summary"]
    cmd += ["--mix", str(mix), "--keep-samples", str(tmp_path / "kept")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(open(tmp_path / "run_stats.csv"))}
    assert int(rows[("", "Aggregated")]["Failure Count"]) == 0, done.stderr[-2000:]
    asked = {n for t, n in rows if t == "POST"}
    assert asked == {"generate steps=1", "generate steps=auto"}
    used = {n for t, n in rows if t == "STEPS"}
    assert "used steps=1" in used and used <= {f"used steps={k}" for k in range(1, 5)}
    (kept,) = (tmp_path / "kept").glob("*.npz")
    recs = score.load(kept)
    count = lambda t: sum(int(r["Request Count"]) for (ty, _), r in rows.items() if ty == t)  # noqa: E731
    assert count("STEPS") == count("POST") > 0  # every answer counted once by the step count it used
    assert len(recs) > 0  # (the kept file is written at test_stop; the CSV's counts may end a little earlier)
    assert {r["asked"] for r in recs} == {1, "auto"} and all(len(r["x"]) == len(r["labels"]) for r in recs)
