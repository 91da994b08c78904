"""The consistency (re-noising multistep) sampler in the server: equal to the library's stochastic
sampler for the same seed, whatever else shares the batch (per-sample Philox draws)."""

from __future__ import annotations

import pytest
import torch

from flowmap.generate import renoise_draws
from flowmap.samplers import guided, make_noise, sample_keys, sample_stochastic, uniform_grid
from server.core_process.engine_core import Executor
from server.core_process.scheduler import Job, Scheduler

SHAPE, C = [1, 2, 2], 10
torch.set_num_threads(1)


class FakeEngine:
    """u(x, s, t, y) by elementwise ops only (exact whatever the batch); records the t it is called at."""

    def __init__(self):
        self.ts: list[list[float]] = []

    def __call__(self, x, s, t, y):
        self.ts.append(t.tolist())
        e = lambda v: v.float().reshape(-1, 1, 1, 1)
        return -0.5 * x + 0.1 * e(y) + e(s) * x - e(t)


def job(n, steps, seed, label=0, guidance=1.0, consistency=True) -> Job:
    keys = sample_keys(seed, n).tolist() if consistency else None
    return Job(make_noise(n, SHAPE, seed), [label] * n, steps, guidance, seed=seed, keys=keys)


def library(j: Job, eng) -> torch.Tensor:
    """flowmap.generate's stochastic path for this request alone: the same u, grid, keys."""
    u = guided(eng, j.guidance, C)
    draws = renoise_draws(sample_keys(j.seed, j.n), j.noise.shape)
    return sample_stochastic(u, j.noise, uniform_grid(j.steps), torch.tensor(j.labels), noise=draws)


def flowmap_library(j: Job, eng) -> torch.Tensor:
    from flowmap.samplers import sample_flowmap

    return sample_flowmap(guided(eng, j.guidance, C), j.noise, uniform_grid(j.steps), torch.tensor(j.labels))


def drain(sched: Scheduler, execute, limit: int = 100) -> None:
    now = 0.0
    for _ in range(limit):
        plan = sched.next_batch(now)
        if plan is None:
            return
        sched.update(plan, execute(plan), now)
        now += 1e-3
    raise AssertionError("scheduler did not go idle")


def run(jobs: list[Job], max_batch: int = 64) -> FakeEngine:
    eng = FakeEngine()
    sched = Scheduler(max_batch, 16, 0.0, 4)
    for j in jobs:
        sched.submit(j, 0.0)
    drain(sched, Executor(eng, C, conditional=True))
    return eng


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
def test_consistency_rows_equal_the_library_sampler_in_a_mixed_batch(steps):
    target = job(3, steps, seed=42, label=4)
    mates = [job(2, 4, 1, 2, consistency=False), job(1, 3, 7, 9, guidance=2.0), job(4, 2, 5, C)]
    run([mates[0], target, *mates[1:]])
    assert target.error is None
    assert torch.equal(target.result, library(target, FakeEngine()))
    for m in mates:
        want = library(m, FakeEngine()) if m.keys is not None else flowmap_library(m, FakeEngine())
        assert torch.equal(m.result, want)


def test_result_does_not_depend_on_batch_mates_or_batch_size():
    alone = job(5, 4, seed=3, label=1, guidance=1.5)
    run([alone])
    for max_batch in (2, 64):  # split over several admissions, or all in one call with others
        mixed = job(5, 4, seed=3, label=1, guidance=1.5)
        run([job(3, 2, 9, 0), mixed, job(2, 4, 8, 5, consistency=False)], max_batch=max_batch)
        assert torch.equal(mixed.result, alone.result)


def test_the_network_jumps_consistency_rows_to_data():
    eng = run([job(1, 2, 0, consistency=False), job(1, 2, 1)])
    assert eng.ts[0] == pytest.approx([0.5, 0.0]) and eng.ts[1] == [0.0, 0.0]


def test_renoising_differs_from_the_flow_map_and_follows_the_seed():
    a, b, c = job(2, 3, 1), job(2, 3, 1, consistency=False), job(2, 3, 2)
    c.noise = a.noise.clone()  # same start, other re-noise keys
    run([a, b, c])
    assert not torch.allclose(a.result, b.result) and not torch.allclose(a.result, c.result)
