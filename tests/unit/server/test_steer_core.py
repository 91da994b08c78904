"""Steered requests in the step-level batch: particles are rows that share network calls with other
requests' rows, are resampled at each step boundary by the reward of their jump to data (draws keyed by
the request's seed and the step), and give exactly the library's flowmap.steering.sample_particles."""

from __future__ import annotations

import pytest
import torch

from flowmap.samplers import guided, make_noise, sample_keys, uniform_grid
from flowmap.steering import sample_particles
from server.core_process.engine_core import Executor
from server.core_process.scheduler import Job, Scheduler, Steer

SHAPE, C = [1, 2, 2], 10
torch.set_num_threads(1)


class FakeEngine:
    """u(x, s, t, y) by elementwise ops only (exact whatever the batch); records each call's rows."""

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, x, s, t, y):
        self.calls.append(len(x))
        e = lambda v: v.float().reshape(-1, 1, 1, 1)
        return -0.5 * x + 0.1 * e(y) + e(s) * x - e(t)


def bright(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1)


def steered(n, p, steps, seed, label=0, guidance=1.0, select="sir", scale=4.0, reward=bright) -> Job:
    keys = sample_keys(seed, n * p).tolist()
    st = Steer(p, reward, scale, select, "ink")
    return Job(
        make_noise(n * p, SHAPE, seed), [label] * (n * p), steps, guidance, seed=seed, keys=keys, steer=st
    )


def plain(n, steps, seed, label=0, consistency=False) -> Job:
    keys = sample_keys(seed, n).tolist() if consistency else None
    return Job(make_noise(n, SHAPE, seed), [label] * n, steps, seed=seed, keys=keys)


def library(j: Job, eng) -> torch.Tensor:
    """flowmap.steering.sample_particles for this request alone, with the request's keys."""
    s = j.steer
    u = guided(eng, j.guidance, C)
    y = torch.tensor(j.labels)
    keys = torch.tensor(j.keys)
    grid = uniform_grid(j.steps)
    return sample_particles(
        u, j.noise, grid, s.reward, s.scale, s.particles, "flowmap", s.select, y, keys=keys
    )


def run(jobs: list[Job], max_batch: int = 64) -> FakeEngine:
    eng, now = FakeEngine(), 0.0
    sched = Scheduler(max_batch, 16, 0.0, 4)
    for j in jobs:
        sched.submit(j, 0.0)
    ex = Executor(eng, C, conditional=True)
    for _ in range(200):
        plan = sched.next_batch(now)
        if plan is None:
            return eng
        sched.update(plan, ex(plan), now)
        now += 1e-3
    raise AssertionError("scheduler did not go idle")


@pytest.mark.parametrize("select", ["sir", "best"])
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_steered_rows_equal_the_library_sampler_in_a_mixed_batch(steps, select):
    target = steered(3, 4, steps, seed=42, label=4, select=select)
    mates = [plain(2, 4, 1, 2), steered(2, 3, 3, 7, 9, guidance=2.0), plain(4, 2, 5, consistency=True)]
    eng = run([mates[0], target, *mates[1:]])
    assert target.error is None and target.result.shape == (3, *SHAPE)
    assert torch.equal(target.result, library(target, FakeEngine()))
    assert torch.equal(mates[1].result, library(mates[1], FakeEngine()))
    # every job was admitted at once: the first call holds all their rows (guided particles twice)
    assert eng.calls[0] == 2 + 12 + 2 * 6 + 4


def test_steering_changes_the_samples_toward_the_reward():
    a, b = steered(8, 8, 2, seed=3), steered(8, 8, 2, seed=3, scale=0.0)
    run([a, b])
    assert bright(a.result).mean() > bright(b.result).mean() + 0.1


def test_result_does_not_depend_on_batch_mates_or_batch_size():
    alone = steered(3, 4, 3, seed=5, label=1)
    run([alone])
    for max_batch in (4, 9, 64):  # one group per call, groups split over admissions, all at once
        mixed = steered(3, 4, 3, seed=5, label=1)
        run([plain(3, 2, 9), mixed, steered(2, 2, 4, 8)], max_batch=max_batch)
        assert torch.equal(mixed.result, alone.result)


def test_particle_groups_are_admitted_whole():
    j = steered(2, 5, 2, seed=1)
    eng = run([plain(3, 1, 0), j], max_batch=8)  # 3 plain rows leave 5 free: exactly one group
    assert eng.calls == [8, 5, 5, 5]  # 3 rows free after the plain job: too few for the second group
    assert j.result.shape == (2, *SHAPE)


def test_a_failing_reward_fails_its_request_only():
    def broken(x):
        raise RuntimeError("reward broke")

    bad, good, mate = steered(2, 3, 2, seed=1, reward=broken), steered(2, 3, 2, seed=2), plain(2, 2, 3)
    run([bad, good, mate])
    assert isinstance(bad.error, RuntimeError) and bad.result is None
    assert good.error is None and mate.error is None and good.result.shape == (2, *SHAPE)


def test_a_reward_failing_in_two_runs_of_one_request_ends_it_once():
    calls = []

    def flaky(x):  # fine on the first call, then fails: the second step holds two runs of the job
        calls.append(len(x))
        if len(calls) > 1:
            raise RuntimeError("reward broke")
        return bright(x)

    done = []
    bad = steered(2, 3, 2, seed=1, reward=flaky)
    bad.on_done = done.append
    mate = plain(3, 1, 0)
    run([mate, bad], max_batch=6)  # step 1: plain + first group; step 2: both groups, one run each
    assert calls == [3, 3, 3] and len(done) == 1 and isinstance(bad.error, RuntimeError)
    assert mate.error is None


def test_groups_wider_than_a_lowered_batch_cap_join_while_the_engine_can():
    """The warm-up may cap batches below the engine's limit (build.warm_up): 8 rows of 64 here. A steered
    request's 16-particle groups are wider than the cap; they join the batch one per step boundary while
    the engine's limit allows, instead of each waiting for an empty batch (head-of-line blocking)."""
    eng, now = FakeEngine(), 0.0
    sched = Scheduler(64, 16, 0.0, 4)
    sched.max_batch = 8
    j = steered(3, 16, 4, seed=2)
    sched.submit(j, 0.0)
    ex = Executor(eng, C, conditional=True)
    while (plan := sched.next_batch(now)) is not None:
        sched.update(plan, ex(plan), now)
        now += 1e-3
    assert eng.calls[:3] == [16, 32, 48] and len(eng.calls) == 6  # all three groups in flight by step 3
    alone = steered(3, 16, 4, seed=2)
    run([alone])
    assert torch.equal(j.result, alone.result)
