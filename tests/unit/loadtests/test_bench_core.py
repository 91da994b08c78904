"""loadtests.bench_core runs end to end on the shipped digits model and its core answers what the naive
loop computes (same seed, same engine: the same samples)."""

from __future__ import annotations

import numpy as np
import torch

from loadtests import bench_core
from server.common import messages as m
from server.common.settings import ServerSettings
from server.core_process.build import build_core
from server.core_process.process import CoreServer


def test_core_and_naive_loop_agree():
    settings = ServerSettings(models=["digits"], engine="eager", device="cpu")
    with torch.inference_mode():
        core, model, _ = build_core("digits", settings)
        server = CoreServer(core, model, settings, link=None)
        for n, steps in bench_core.WORKLOADS:
            done = m.decode(bench_core.through_core(server, n, steps, seed=7))
            assert isinstance(done, m.Done) and done.steps == steps
            ours = np.frombuffer(done.data, np.float32)
            ref = np.frombuffer(bench_core.naive(core.executor.engine, model.shape, n, steps, 7), np.float32)
            np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_main_prints_a_row_per_workload(capsys):
    assert bench_core.main(["--engine", "eager", "--requests", "5", "--repeat", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "x" in line]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["1x1", "8x2", "1x4"]
