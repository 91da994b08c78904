import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from engines.bench import format_table, run
from engines.cli import main

ROOT = Path(__file__).resolve().parents[3]


class FakeClock:
    """Stands in for time.perf_counter inside engines.bench; only the fake engines move it."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeEngine:
    """Takes a known time per call on the fake clock: ms_per_row * batch, except two 100 ms stalls
    in the timed calls of each batch size, and 1 s for each warm-up call (which must not be counted)."""

    STALLS, STALL_MS, WARMUP_MS = (37, 81), 100.0, 1000.0

    def __init__(self, name: str, ms_per_row: float, clock: FakeClock, log: list):
        self.name, self.ms_per_row, self.clock, self.log = name, ms_per_row, clock, log
        self.device, self.calls = torch.device("cpu"), {}

    def __call__(self, x, s, t, y):
        b = x.shape[0]
        assert s.shape == t.shape == y.shape == (b,)
        k = self.calls[b] = self.calls.get(b, 0) + 1
        timed = k - WARMUP  # 1-based index of the timed call, <= 0 during warm-up
        ms = self.WARMUP_MS if timed <= 0 else self.STALL_MS if timed in self.STALLS else self.ms_per_row * b
        self.clock.now += ms / 1e3
        self.log.append((self.name, b))
        return x


WARMUP, ITERS = 5, 100  # bench_model's default warm-up calls; 100 timed calls a row


def test_bench_numbers_are_the_latencies_the_engines_took(tiny, monkeypatch):
    """Engines with known per-call times on a fake clock: median, p99, samples/s and vs_eager must
    come out as those times say (a 4x faster engine reads 4x, warm-up and stalls stay out of the median)."""
    from engines import bench

    clock, log = FakeClock(), []
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=clock))
    fakes = {"eager": FakeEngine("eager", 0.5, clock, log), "fast": FakeEngine("fast", 0.125, clock, log)}
    rows = bench.bench_model(tiny, fakes, [2, 8], iters=ITERS, warmup=WARMUP)
    got = {(r["engine"], r["batch"]): r for r in rows}
    assert set(got) == {(e, b) for e in fakes for b in (2, 8)}
    for (name, b), r in got.items():
        per_row_ms = fakes[name].ms_per_row
        assert fakes[name].calls[b] == WARMUP + ITERS, (name, b, fakes[name].calls)
        assert r["median_ms"] == pytest.approx(per_row_ms * b, rel=1e-6)
        assert r["p99_ms"] == pytest.approx(FakeEngine.STALL_MS, rel=1e-6)  # 2 stalls in 100 calls
        assert r["samples_per_s"] == pytest.approx(1e3 / per_row_ms, rel=1e-6)  # 2000 and 8000 rows/s
        assert r["vs_eager"] == pytest.approx({"eager": 1.0, "fast": 4.0}[name], rel=1e-6)
        assert r["model"] == tiny.name
    for b in (2, 8):  # timed calls interleaved: each engine's calls come in more than one run
        seq = [name for name, bb in log if bb == b][2 * WARMUP :]
        runs = sum(1 for i, name in enumerate(seq) if i == 0 or seq[i - 1] != name)
        assert runs >= 4, (b, runs)


def test_step_rows_convert_the_kernel_bench_units(monkeypatch):
    """engines.bench reports kernels.bench's step timings in microseconds, one row per (batch, mode)."""
    import kernels.bench
    from engines import bench

    def fake(batch_sizes, shape, **_):
        rows = [{"batch": b, "mode": m, "fused_ms": 0.002 * b, "unfused_ms": 0.006 * b, "speedup": 3.0}
                for b in batch_sizes for m in ("step", "cfg")]  # fmt: skip
        return {"path": "torch", "rows": rows}

    monkeypatch.setattr(kernels.bench, "bench_step", fake)
    rows = bench.bench_step([1, 8, 8], [1, 4], iters=10)
    assert [(r["shape"], r["mode"]) for r in rows] == [
        ([1, 1, 8, 8], "step"), ([1, 1, 8, 8], "cfg"), ([4, 1, 8, 8], "step"), ([4, 1, 8, 8], "cfg")
    ]  # fmt: skip
    for r in rows:
        b = r["shape"][0]
        assert r["fused_us"] == pytest.approx(2.0 * b) and r["unfused_us"] == pytest.approx(6.0 * b)
        assert r["speedup"] == 3.0 and r["path"] == "torch"


def test_bench_rows_and_table(tiny):
    """The real engines: every pair measured, and the numbers bounded by the wall time of the run."""
    t0 = time.perf_counter()
    result = run([tiny], ["eager", "torchscript"], [1, 3], iters=10)
    wall_s = time.perf_counter() - t0
    rows = {(r["engine"], r["batch"]): r for r in result["rows"]}
    assert set(rows) == {(e, b) for e in ("eager", "torchscript") for b in (1, 3)}
    for (_, batch), r in rows.items():
        assert r["p99_ms"] >= r["median_ms"] > 0
        # throughput and latency describe the same calls (a unit slip breaks this)
        assert r["samples_per_s"] == pytest.approx(batch / (r["median_ms"] / 1e3), rel=1e-9)
        eager = rows[("eager", batch)]
        assert r["vs_eager"] == pytest.approx(r["samples_per_s"] / eager["samples_per_s"], rel=1e-9)
    # at least half of a row's 10 timed calls took >= its median, and they all ran inside run()
    assert sum(5 * r["median_ms"] / 1e3 for r in rows.values()) <= wall_s
    assert {(s["shape"][0], s["mode"]) for s in result["step"]} == {
        (b, m) for b in (1, 3) for m in ("step", "cfg", "renoise")
    }
    assert all(s["fused_us"] > 0 and s["unfused_us"] > 0 for s in result["step"])
    step_s = sum(s["fused_us"] + s["unfused_us"] for s in result["step"]) / 1e6
    assert step_s <= wall_s
    table = format_table(result)
    assert "torchscript" in table and "vs eager" in table and "speedup" in table


def test_local_step_times_the_fused_kernel_call(monkeypatch):
    """local_step's fused column is kernels.fused_step: made 3 ms slower, it reads >= 3 ms and the
    speedup of fused over unfused falls below 1/3; the unfused step (plain torch ops) is untouched."""
    import kernels
    from engines.bench import local_step

    calls, real = [], kernels.fused_step

    def slow_fused_step(*args, **kw):
        calls.append(args[0].shape)
        time.sleep(3e-3)
        return real(*args, **kw)

    monkeypatch.setattr(kernels, "fused_step", slow_fused_step)
    (row,) = local_step([1, 8, 8], [2], iters=10)
    assert row["shape"] == [2, 1, 8, 8] and row["path"] == kernels.resolve_path(torch.device("cpu"))
    assert len(calls) == 10 + 10 and all(c == (2, 1, 8, 8) for c in calls)  # 10 warm-up, 10 timed
    assert 3000 <= row["fused_us"] < 3000 + 100_000
    assert 0 < row["unfused_us"] < row["fused_us"] / 3 and row["speedup"] < 1 / 3


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
