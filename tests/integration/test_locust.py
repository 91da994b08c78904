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
