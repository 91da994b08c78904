"""bench_server's mixed section: one table per mix (8- and 1-sample requests), step / request per row."""

from __future__ import annotations

from loadtests import bench_server
from loadtests.httpload import Result


def curve(samples_per_s: list[float], p99_ms: list[float]) -> list[Result]:
    """Sweep points of 1 s each: `sps` samples and every latency at the given p99."""
    return [
        Result(concurrency=c, seconds=1.0, latencies=[p / 1e3] * 10, samples=int(s))
        for c, s, p in zip((2, 4, 8, 16, 32), samples_per_s, p99_ms, strict=True)
    ]


def test_each_mix_gets_its_table_with_the_ratio_per_concurrency():
    modes = {
        "step": curve([100, 120, 150, 160, 160], [10, 20, 30, 40, 50]),
        "request": curve([50, 60, 100, 160, 200], [10, 20, 30, 40, 50]),
    }
    one = "\n".join(bench_server.mixed_section(1, modes))
    assert "### Mixed 1-4 steps (1-sample requests)" in one
    assert "| 2 | 100 | 10.0 | 50 | 10.0 | 2.00x |" in one
    assert "| 32 | 160 | 50.0 | 200 | 50.0 | 0.80x |" in one
    assert "**1.50x**" in one  # at the request curve's median p99 (30 ms): 150 vs 100 samples/s
    assert "(8-sample requests)" in "\n".join(bench_server.mixed_section(8, modes))
