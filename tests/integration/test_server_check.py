"""scripts/server_check.py (the server section of the GPU check) runs end to end on CPU."""

from __future__ import annotations

import sys

from tests.integration.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

from server_check import check  # noqa: E402


def test_server_check_measures_latency_and_utilisation_on_cpu(checkpoints):
    out = check("cpu", str(checkpoints["digits"]), seconds=1.0, lone=20)
    assert out["loaded_requests"] > 0
    assert 0 < out["core_compute_p50_ms"] < out["p50_ms"]
    assert 0 < out["loop_utilisation"] <= 1.05  # one call may straddle the window
