import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engines.bench import format_table, run
from engines.cli import main

ROOT = Path(__file__).resolve().parents[3]


def test_bench_rows_and_table(tiny):
    result = run([tiny], ["eager", "torchscript"], [1, 3], iters=3)
    rows = {(r["engine"], r["batch"]): r for r in result["rows"]}
    assert set(rows) == {(e, b) for e in ("eager", "torchscript") for b in (1, 3)}
    for (engine, batch), r in rows.items():
        assert r["p99_ms"] >= r["median_ms"] > 0
        assert abs(r["samples_per_s"] - batch / (r["median_ms"] / 1e3)) < 1e-6 * r["samples_per_s"]
        if engine == "eager":
            assert r["vs_eager"] == 1.0
    assert sorted({s["shape"][0] for s in result["step"]}) == [1, 3]
    assert all(s["speedup"] > 0 and s["mode"] for s in result["step"])
    table = format_table(result)
    assert "torchscript" in table and "vs eager" in table and "speedup" in table


def test_local_step_measures_fused_against_unfused():
    from engines.bench import local_step

    rows = local_step([1, 8, 8], [2], iters=5)
    assert rows[0]["shape"] == [2, 1, 8, 8] and rows[0]["path"] == "torch"
    assert rows[0]["speedup"] == rows[0]["unfused_us"] / rows[0]["fused_us"]


def test_bench_skips_unloadable_engine_with_reason(tiny):
    """tensorrt cannot load here (not installed, or no CUDA device for it): reported, not fatal."""
    result = run([tiny], ["eager", "tensorrt"], [1], iters=2, step=False)
    assert {r["engine"] for r in result["rows"]} == {"eager"}
    assert "tiny/tensorrt" in result["skipped"]


def test_cli_bench_json(tiny_path, tmp_path):
    out = tmp_path / "bench.json"
    rc = main(
        [
            "bench",
            "--model",
            str(tiny_path),
            "--engines",
            "eager",
            "--batches",
            "2",
            "--iters",
            "2",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["machine"]["threads"] == 1 and result["rows"][0]["batch"] == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: run the script itself")
def test_gpu_check_skips_cleanly_without_cuda(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA device" in proc.stdout
    assert json.loads(out.read_text())["skipped"]
