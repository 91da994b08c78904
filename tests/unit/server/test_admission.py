"""Admission by predicted time and early exit, driven by a fake engine and a fake clock with a known
cost per iteration: the predictions are checked against what the scheduler then really does."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from flowmap.samplers import make_noise, sample_flowmap
from server.common.estimator import CallTimer
from server.common.settings import ServerSettings
from server.core_process import admission, early_exit
from server.core_process.build import warm_up
from server.core_process.demand import Demand
from server.core_process.engine_core import EngineCore, Executor
from server.core_process.scheduler import DeadlineExceeded, Job, QueueFull, Scheduler

SHAPE, C = [1, 2, 2], 10
STEP = 0.010  # seconds per iteration, whatever the rows (the fake clock's cost)


class FakeEngine:
    """u(x, s, t, y) by elementwise ops only (exact whatever the batch)."""

    def __call__(self, x, s, t, y):
        e = lambda v: v.float().reshape(-1, 1, 1, 1)
        return -0.5 * x + 0.1 * e(y) + e(s) * x - e(t)


def timer(step: float = STEP) -> CallTimer:
    t = CallTimer()
    for rows in (1, 128):
        t.observe(rows, step)
    return t


def setup(max_batch=8, max_steps=4):
    sched = Scheduler(max_batch, 10_000, 0.0, max_steps, timer=timer())
    return sched, Executor(FakeEngine(), C, conditional=True)


def job(n=1, steps=1, seed=0, deadline=None) -> Job:
    return Job(make_noise(n, SHAPE, seed), [seed % C] * n, steps, deadline=deadline)


def run(sched: Scheduler, ex, now: float = 0.0, cost=lambda rows: STEP, limit: int = 1000) -> float:
    """Run to idle on a fake clock: an iteration of r rows takes cost(r) seconds (the timer learns it)."""
    for _ in range(limit):
        plan = sched.next_batch(now)
        if plan is None:
            return now
        now += cost(plan.rows)
        sched.update(plan, ex(plan), now)
        sched.observe(plan.rows, cost(plan.rows))
    raise AssertionError("scheduler did not go idle")


def test_an_idle_core_admits_at_once_and_predicts_its_own_steps():
    sched, _ = setup()
    assert admission.wait_seconds(sched, 3) == 0.0
    assert admission.finish_seconds(sched, 3, 4) == pytest.approx(4 * STEP)
    assert admission.finish_seconds(sched, 20, 2) == pytest.approx(2 * math.ceil(20 / 8) * STEP)


@pytest.mark.parametrize("mix", [[(8, 4)] * 6, [(3, 2), (5, 4), (2, 1), (8, 3), (1, 4)] * 3])
def test_predicted_finish_bounds_the_real_finish_from_above_within_a_few_steps(mix):
    """Queue a mix, predict the finish of one more request, then run it: the prediction is never early
    (a refusal is never needed to be wrong the other way) and late by at most max_steps iterations."""
    sched, ex = setup()
    for i, (n, k) in enumerate(mix):
        sched.submit(job(n, k, seed=i), 0.0)
    assert admission.wait_seconds(sched, 2) > 0
    predicted = admission.finish_seconds(sched, 2, 3)
    last = job(2, 3, seed=99)
    sched.submit(last, 0.0)
    run(sched, ex)
    assert last.error is None
    assert last.finished <= predicted + 1e-9
    assert predicted - last.finished <= sched.max_steps * STEP + 1e-9


def test_the_queue_bound_refuses_with_retry_after_and_draws_nothing():
    sched, ex = setup()
    for i in range(10):  # 10 x 8 rows x 4 steps: 40 full iterations (0.4 s) of work
        sched.submit(job(8, 4, seed=i), 0.0)
    wait = admission.wait_seconds(sched, 1)
    assert wait == pytest.approx(40 * STEP)
    core = EngineCore("m", sched, ex, clock=lambda: 0.0, max_queue=0.25)
    made = []
    with pytest.raises(QueueFull) as e:
        core.admit(1, lambda: made.append(1) or job(), steps=1, deadline=100.0)
    assert not made and "queue wait 400 ms" in str(e.value) and e.value.retry_after == 1
    loose = EngineCore("m", sched, ex, clock=lambda: 0.0, max_queue=0.5)
    accepted = loose.admit(1, job, steps=1, deadline=100.0)
    assert accepted in sched.waiting


def test_a_request_predicted_past_its_deadline_is_refused_one_that_fits_is_not():
    sched, ex = setup()
    for i in range(3):  # 12 full iterations queued: 0.12 s
        sched.submit(job(8, 4, seed=i), 0.0)
    core = EngineCore("m", sched, ex, clock=lambda: 0.0)
    finish = admission.finish_seconds(sched, 1, 2)
    with pytest.raises(QueueFull) as e:
        core.admit(1, job, steps=2, deadline=finish - 0.001)
    assert "past the request's deadline" in str(e.value) and e.value.retry_after >= 1
    with pytest.raises(QueueFull):  # the margin (the way back) counts against the deadline
        core.admit(1, job, steps=2, deadline=finish + 0.005, margin=0.01)
    ok = core.admit(1, lambda: job(1, 2, seed=7, deadline=finish + 1e-6), steps=2, deadline=finish + 1e-6)
    run(sched, ex)
    assert ok.error is None and ok.finished <= ok.deadline  # the accepted one made it


def test_at_risk_marks_rows_that_cannot_wait_for_the_next_boundary():
    k, K = np.array([0, 0, 2, 2, 3, 1]), np.array([4, 4, 4, 4, 4, 2])
    deadline = np.array([1.05, 1.015, 1.025, 1.01, 1.0, np.inf])
    # at 10 ms a step, a jump at the next boundary ends at 1.02: the first row may go on; the second may
    # not; the third's 2 steps end at 1.02 (no need); the fourth's do not; the fifth has one step left
    # (nothing to gain); the sixth has no deadline
    got = early_exit.at_risk(k, K, deadline, 1.0, 0.01).tolist()
    assert got == [False, True, False, True, False, False]


def test_early_exit_jumps_to_data_from_the_current_time_and_meets_the_deadline():
    """4 steps asked, room for 3 iterations: 1 -> 0.75 -> 0.5, then one jump 0.5 -> 0; the result is the
    flow-map sampler on exactly that grid, and the job reports 3 steps."""
    sched, ex = setup()
    j = job(2, 4, seed=3, deadline=0.035)
    sched.submit(j, 0.0)
    run(sched, ex)
    assert j.error is None and j.finished <= j.deadline
    assert j.steps == 4 and j.steps_taken == 3
    grid = torch.tensor([1.0, 0.75, 0.5, 0.0])
    ref = sample_flowmap(FakeEngine(), j.noise, grid, torch.tensor(j.labels))
    torch.testing.assert_close(j.result, ref, rtol=0, atol=1e-6)


def test_rows_with_time_to_spare_keep_every_step():
    sched, ex = setup()
    hopeless, loose = job(1, 4, seed=1, deadline=0.005), job(1, 4, seed=2, deadline=10.0)
    sched.submit(hopeless, 0.0)
    sched.submit(loose, 0.0)
    run(sched, ex)
    assert hopeless.steps_taken == 1 and hopeless.finished == pytest.approx(STEP)  # one jump, best effort
    assert loose.error is None and loose.steps_taken == 4
    ref = sample_flowmap(FakeEngine(), loose.noise, torch.linspace(1, 0, 5), torch.tensor(loose.labels))
    torch.testing.assert_close(loose.result, ref, rtol=0, atol=1e-6)


def test_a_row_past_its_deadline_before_it_starts_still_gets_504():
    sched, ex = setup()
    j = job(1, 4, deadline=0.005)
    sched.submit(j, 0.0)
    run(sched, ex, now=0.01)
    assert isinstance(j.error, DeadlineExceeded)


def test_later_arrivals_make_auto_cut_short_instead_of_missing():
    """ "auto" chose 4 steps on an idle core; a flood then slows every step (an iteration's cost grows
    with its rows): its rows exit early and the job still finishes within its deadline, where choosing
    once alone would miss it."""
    cost = lambda rows: 0.010 + 0.030 * (rows - 1) / 63  # 10 ms for one row, 40 ms for 64
    sched = Scheduler(64, 10_000, 0.0, 4, timer=CallTimer())
    for rows in (1, 64):
        sched.observe(rows, cost(rows))
    ex = Executor(FakeEngine(), C, conditional=True)
    a = job(1, None, seed=5, deadline=0.045)
    sched.submit(a, 0.0)
    assert a.steps == 4
    plan = sched.next_batch(0.0)
    now = cost(plan.rows)
    sched.update(plan, ex(plan), now)
    for i in range(6):  # the flood: 48 more rows, each iteration now ~33 ms
        sched.submit(job(8, 4, seed=10 + i), now)
    run(sched, ex, now, cost=cost)
    assert a.error is None and a.finished <= a.deadline and a.steps_taken == 2


def test_a_deadline_no_idle_core_can_meet_is_not_a_retryable_429():
    """Compute alone over budget: a 429 with Retry-After would make retrying clients retry forever."""
    sched, ex = setup()
    core = EngineCore("m", sched, ex, clock=lambda: 0.0)
    made = []
    with pytest.raises(admission.Unmeetable) as e:  # not even one step (10 ms) fits 5 ms
        core.admit(1, lambda: made.append(1) or job(), steps=4, deadline=0.005)
    assert not isinstance(e.value, QueueFull) and isinstance(e.value, DeadlineExceeded)
    assert not made and "deadline_ms" in str(e.value)


def test_fixed_steps_that_never_fit_are_admitted_when_one_jump_fits_and_early_exit_meets_it():
    sched, ex = setup()
    core = EngineCore("m", sched, ex, clock=lambda: 0.0)
    j = core.admit(2, lambda: job(2, 4, seed=5, deadline=0.025), steps=4, deadline=0.025)  # 4 steps: 40 ms
    run(sched, ex)
    assert j.error is None and j.finished <= j.deadline and 1 <= j.steps_taken < 4


def test_retry_after_counts_only_the_queue_part():
    sched, ex = setup()
    for i in range(75):  # 300 full iterations queued: 3 s
        sched.submit(job(8, 4, seed=i), 0.0)
    core = EngineCore("m", sched, ex, clock=lambda: 0.0, max_queue=10.0)
    with pytest.raises(QueueFull) as e:  # 4 steps never fit 35 ms; one jump does once the 3 s queue drains
        core.admit(1, job, steps=4, deadline=0.035)
    assert e.value.retry_after == 3  # ceil(3.0 + 0.01 - 0.035), not ceil(3.0 + 0.04 - 0.035) = 4


def test_early_exit_plans_against_the_deadline_less_the_margin():
    """The deadline is far (100 ms) but the margin (the way back) leaves 30 ms: the rows are cut to meet
    30 ms, where the raw deadline's quick check would let them take all 4 steps (40 ms)."""
    sched, ex = setup()
    j = Job(make_noise(1, SHAPE, 4), [4], 4, deadline=0.1, margin=0.07)
    sched.submit(j, 0.0)
    run(sched, ex)
    assert j.error is None and j.finished <= j.deadline - j.margin + 1e-9 and j.steps_taken < 4


def test_with_early_exit_off_steps_are_chosen_once_and_a_late_row_keeps_them():
    """The choose-once baseline (--early-exit off): the request of the early-exit test above keeps its 4
    steps and misses its deadline (504 at the next boundary past it), and admission judges its own steps."""
    sched = Scheduler(8, 10_000, 0.0, 4, timer=timer(), exit_early=False)
    ex = Executor(FakeEngine(), C, conditional=True)
    j = job(2, 4, seed=3, deadline=0.045)
    sched.submit(j, 0.0)
    run(sched, ex, cost=lambda rows: 0.020)
    assert isinstance(j.error, DeadlineExceeded) and j.exit_steps is None
    core = EngineCore("m", sched, ex, clock=lambda: 0.0)
    with pytest.raises(admission.Unmeetable):  # 4 steps (40 ms) never fit 25 ms; one jump would
        core.admit(2, lambda: job(2, 4, seed=5, deadline=0.025), steps=4, deadline=0.025)


def test_batch_cap_is_the_smallest_batch_near_the_best_rows_per_second():
    linear = {r: 0.004 + 0.001 * r for r in (1, 8, 16, 32, 64, 128)}  # 4 ms per call, 1 ms per row
    assert admission.batch_cap(linear, 0.9) == 32  # 32/36 = 0.89 rows/ms of the best 0.97
    assert admission.batch_cap(linear, 1.0) == 128
    flat = {r: 0.004 for r in (1, 8, 64)}  # a GPU below saturation: bigger is always better
    assert admission.batch_cap(flat, 0.9) == 64


def test_batch_cap_never_splits_an_8_sample_request():
    """mnist on ONNX Runtime: 4 rows reach 90% of the best rows/s, but the cap stays at 8 (the floor); a
    model measured only below the floor is capped at its largest size."""
    ms = {1: 6.5, 2: 9.4, 4: 17.1, 8: 32.0, 16: 61.6, 32: 125.9, 64: 259.8, 128: 603.4}
    costs = {r: t / 1e3 for r, t in ms.items()}
    assert admission.batch_cap(costs, 0.9, floor=1) == 4
    assert admission.batch_cap(costs, 0.9) == 8
    assert admission.batch_cap({1: 0.001, 2: 0.0015, 4: 0.0025}, 0.9) == 4


def test_batches_whose_step_is_short_are_filled_whatever_the_knee():
    """digits (one start's idle costs): 16 rows reach 90% of the best rows/s, so the knee alone caps there,
    but 128 rows still step in 8 ms: with `free` 10 ms the cap is 128. mnist's 8 rows take 23-32 ms, so
    nothing below the knee is free and its cap stays 8; a free bound below every step changes nothing."""
    ms = {1: 0.8, 2: 0.8, 4: 0.5, 8: 0.7, 16: 1.1, 32: 2.4, 64: 4.5, 128: 8.6}
    digits = {r: t / 1e3 for r, t in ms.items()}
    assert admission.batch_cap(digits, 0.9) == 16
    assert admission.batch_cap(digits, 0.9, free=0.010) == 128
    assert admission.batch_cap(digits, 0.9, free=0.005) == 64
    ms = {1: 6.5, 2: 9.4, 4: 17.1, 8: 32.0, 16: 61.6, 32: 125.9}
    mnist = {r: t / 1e3 for r, t in ms.items()}
    assert admission.batch_cap(mnist, 0.9, free=0.010) == admission.batch_cap(mnist, 0.9) == 8
    assert admission.batch_cap(mnist, 0.9, free=0.0005) == 8


def linear_core():
    """(scheduler, core, clock) of a 64-row core whose call of r rows costs 4 ms + 1 ms per row on a fake
    clock (clock[0], seconds)."""
    clock = [0.0]

    class Linear(FakeEngine):
        def __call__(self, x, s, t, y):
            clock[0] += 0.004 + 0.001 * len(x)
            return super().__call__(x, s, t, y)

    sched = Scheduler(64, 10_000, 0.0, 4)
    return (
        sched,
        EngineCore("m", sched, Executor(Linear(), C, conditional=True), clock=lambda: clock[0]),
        clock,
    )


@pytest.mark.parametrize("knee, cap", [(0.9, 32), (0.0, 64)])
def test_warm_up_times_every_batch_size_and_fills_batches_only_while_they_pay(knee, cap):
    """A call of r rows costs 4 ms + 1 ms per row on a fake clock: the warm-up measures it at every bucket,
    the scheduler then fills at most 32 rows (of 64 allowed) and a flood waits for its turn instead."""
    sched, core, clock = linear_core()
    settings = ServerSettings(max_batch_size=64, batch_knee=knee)
    costs = warm_up(core, SimpleNamespace(name="m", shape=SHAPE), settings)
    assert sorted(costs) == [1, 2, 4, 8, 16, 32, 64] and costs[32] == pytest.approx(0.036)
    assert sched.max_batch == cap and sched.timer.predict(16) == pytest.approx(0.020)
    for i in range(8):
        sched.submit(job(8, 2, seed=i), clock[0])
    assert sched.next_batch(clock[0]).rows == cap


def test_warm_up_gives_back_what_its_largest_batches_left_cached():
    """After timing every bucket (the largest last), the engine is asked once to release what it caches for
    batches past the cap; an engine without `release_memory` (a user's class) is fine too."""
    sched, core, clock = linear_core()
    engine, seen = core.executor.engine, []
    engine.release_memory = lambda: seen.append(sched.max_batch)
    warm_up(core, SimpleNamespace(name="m", shape=SHAPE), ServerSettings(max_batch_size=64))
    assert seen == [32]  # once, after the cap was chosen
    del engine.release_memory
    warm_up(core, SimpleNamespace(name="m", shape=SHAPE), ServerSettings(max_batch_size=64))


def test_a_release_that_fails_does_not_stop_the_core(caplog):
    """Memory, not correctness: the engine serves as it is, with a warning naming the model."""
    sched, core, clock = linear_core()

    def fails():
        raise RuntimeError("no arena")

    core.executor.engine.release_memory = fails
    warm_up(core, SimpleNamespace(name="m", shape=SHAPE), ServerSettings(max_batch_size=64))
    assert sched.max_batch == 32 and "model m: the engine kept its warm-up memory" in caplog.text


def test_warm_up_passes_the_free_bound_to_the_cap():
    """The same 4 ms + 1 ms per row engine: the knee alone caps at 32 rows; with --batch-free-ms 70 the
    64-row step (68 ms) counts as free, so the warm-up fills 64."""
    sched, core, clock = linear_core()
    warm_up(core, SimpleNamespace(name="m", shape=SHAPE), ServerSettings(max_batch_size=64, batch_free_ms=70))
    assert sched.max_batch == 64


@pytest.mark.parametrize("rate, mean", [(5, 4.0), (25, 3.45), (50, 1.72), (200, 1.0)])
def test_auto_takes_the_steps_the_arrivals_can_afford(rate, mean):
    """8-row "auto" requests at `rate` per second on an engine making 800 row-steps per second (8 rows
    in 10 ms): below the knee they keep every step; past it their mean steps are 0.85 x 800 / (8 x rate)
    (rate: that of the arrivals before each, a little under `rate`), dithered between the two nearest
    counts; far past it, one step each. The deadline is no constraint."""
    sched, _ = setup()
    core = EngineCore("m", sched, Executor(FakeEngine(), C, conditional=True), clock=lambda: now)
    chosen = []
    for i in range(6 * rate):
        now = i / rate
        j = core.admit(8, lambda: job(8, None, deadline=1e6), steps=1, deadline=1e6, auto=True)
        if now >= 3.0:  # the rates have settled (their memory is 1 s)
            chosen.append(j.steps)
    assert np.mean(chosen) == pytest.approx(mean, abs=0.1) and set(chosen) <= {1, 2, 3, 4}
    assert max(chosen) - min(chosen) <= 1  # dithered between neighbours, never a spread


def test_fixed_step_arrivals_leave_auto_only_the_rest():
    d = Demand()
    for i in range(300):  # 100/s for 3 s: 4-step requests of 1 row (400 row-steps/s) and 8-row auto ones
        d.arrive(i / 100, 1, 4)
        d.arrive(i / 100, 8, None)
    fixed, auto = d.rates(2.99)
    assert fixed == pytest.approx(400, rel=0.05) and auto == pytest.approx(800, rel=0.05)
    assert d.affordable(2.99, 800, 4) == 1  # (0.85 x 800 - 400) / 800 = 0.35: one step
    assert d.affordable(2.99, 4000, 4) == 3  # (3400 - 400) / 800 = 3.75: 3 now, owing 0.75
    assert d.affordable(2.99, 4000, 4) == 4  # and the debt paid


def test_auto_steps_shrink_as_the_queue_nears_its_bound():
    """At a rate that affords 3.4 steps (the test above), a queue half-way to the bound halves them, and
    one at the bound leaves one step: a burst is served with fewer steps instead of refused."""
    d = Demand()
    for i in range(150):
        d.arrive(i / 25, 8, None)
    now = 149 / 25
    mean = lambda pressure: np.mean([d.affordable(now, 800, 4, pressure) for _ in range(100)])
    assert mean(0.0) == pytest.approx(3.4, abs=0.1)
    assert mean(0.5) == pytest.approx(1.7, abs=0.05)
    assert mean(1.0) == 1.0


def test_a_lone_large_auto_request_on_an_idle_core_keeps_every_step():
    """Its own rows are not a rate yet: 64 rows at once (8 full batches) on an engine of 800 row-steps/s
    would afford 0.85 x 800 / 64 = 10 steps anyway, but 200 rows, counted as 200 rows per second, would
    afford 3; the first request is judged by the arrivals before it (none)."""
    sched, ex = setup()
    core = EngineCore("m", sched, ex, clock=lambda: 0.0)
    j = core.admit(200, lambda: job(200, None, deadline=1e6), steps=1, deadline=1e6, auto=True)
    assert j.steps == 4 and sched.demand.auto == 200  # counted after its choice


def queue_auto(sched: Scheduler, count: int, n: int = 8) -> list[Job]:
    """`count` "auto" jobs of `n` rows, no deadline (so 4 steps each), waiting."""
    jobs = [job(n, None, seed=i) for i in range(count)]
    for j in jobs:
        sched.submit(j, 0.0)
    assert all(j.auto and j.steps == 4 for j in jobs)
    return jobs


def test_waiting_auto_jobs_give_up_steps_instead_of_a_429():
    """10 waiting "auto" jobs of 8 rows x 4 steps: 0.4 s of queue, over a 0.25 s bound. They give up the
    15 steps of 8 rows that bring it to 0.25 s, levelled from the most steps (the latest first), and the
    new request is admitted; every job then finishes with the steps it was left."""
    sched, ex = setup()
    jobs = queue_auto(sched, 10)
    core = EngineCore("m", sched, ex, clock=lambda: 0.0, max_queue=0.25)
    new = core.admit(1, job, steps=1, deadline=100.0)
    assert [j.steps for j in jobs] == [3] * 5 + [2] * 5
    assert sched.pending_work() == 8 * 25 + 1  # the first job has started (admitted at the boundary)
    assert sched.auto_slack == 8 * (4 * 2 + 5 * 1)
    run(sched, ex)
    assert new.error is None and [j.steps_taken for j in jobs] == [3] * 5 + [2] * 5
    assert sched.auto_slack == 0 and sched.waiting_work == 0


def test_steps_are_cut_only_when_that_is_enough_and_never_below_one():
    sched, ex = setup()
    auto = queue_auto(sched, 2)  # 2 x 8 rows x 3 steps they could give up: 48 row-steps
    for i in range(8):  # 32 full iterations of fixed steps, which nothing may cut
        sched.submit(job(8, 4, seed=20 + i), 0.0)
    core = EngineCore("m", sched, ex, clock=lambda: 0.0, max_queue=0.25)
    with pytest.raises(QueueFull):  # 40 iterations queued, 25 allowed: 120 row-steps short, 48 to give
        core.admit(1, job, steps=1, deadline=100.0)
    assert [j.steps for j in auto] == [4, 4] and sched.auto_slack == 48  # a refusal changes nothing
    assert sched.shorten(48) == 1 and [j.steps for j in auto] == [1, 1] and sched.auto_slack == 0


def test_an_auto_request_let_in_by_a_cut_keeps_no_more_steps_than_the_jobs_cut_for_it():
    sched, ex = setup()
    jobs = queue_auto(sched, 10)
    core = EngineCore("m", sched, ex, clock=lambda: 0.0, max_queue=0.25)
    new = core.admit(8, lambda: job(8, None, seed=99), steps=1, deadline=100.0, auto=True)
    assert new.auto and new.steps <= max(j.steps for j in jobs[1:]) == 3  # not the 4 no deadline gives
    assert sched.auto_slack == sum(8 * (j.steps - 1) for j in [*jobs[1:], new])


def test_a_request_whose_job_cannot_be_built_cuts_nothing():
    sched, ex = setup()
    jobs = queue_auto(sched, 10)
    core = EngineCore("m", sched, ex, clock=lambda: 0.0, max_queue=0.25)

    def make():
        raise RuntimeError("reward unavailable")

    with pytest.raises(RuntimeError):
        core.admit(1, make, steps=1, deadline=100.0)
    assert [j.steps for j in jobs] == [4] * 10 and sched.auto_slack == 8 * 3 * 10


def test_auto_slack_is_the_waiting_auto_jobs_steps_after_any_mix_of_events():
    """Guided (2 rows a sample) and plain jobs, fixed and "auto"; submit, start, cut, cancel, expire: the
    counter stays the sum it stands for."""
    sched, ex = setup()
    want = lambda: sum(  # noqa: E731
        j.n * j.rows_per_sample * (j.steps - 1) for j in sched.waiting if j.auto and j.first_admit is None
    )
    sizes = [(3, None), (2, 4), (4, None), (1, None), (2, None)]
    jobs = [job(n, steps, seed=i) for i, (n, steps) in enumerate(sizes)]
    jobs[2].guidance = jobs[4].guidance = 1.5  # guided: 2 rows a sample
    for j in jobs:
        sched.submit(j, 0.0)
        assert sched.auto_slack == want()
    sched.next_batch(0.0)  # the first starts (and maybe more), so its slack goes
    assert sched.auto_slack == want()
    assert sched.auto_slack >= 12 and sched.shorten(5) and sched.auto_slack == want()
    sched.cancel(jobs[3], 0.0)
    assert sched.auto_slack == want()
    for j in sched.waiting:
        j.deadline = 0.5
    sched.next_deadline = 0.5
    sched.expire(1.0)
    assert sched.auto_slack == want() == 0


def test_a_deadline_refusal_cuts_waiting_auto_steps_too():
    sched, ex = setup()
    jobs = queue_auto(sched, 3)  # 12 full iterations: a 1-step request finishes at 0.13 s
    core = EngineCore("m", sched, ex, clock=lambda: 0.0)
    j = core.admit(1, lambda: job(1, 1, seed=9, deadline=0.1), steps=1, deadline=0.1)  # 9 iterations fit
    assert sum(x.steps for x in jobs) == 9  # 9 full iterations, then its own
    run(sched, ex)
    assert j.error is None and j.finished <= 0.1 + 1e-9


def test_started_auto_jobs_keep_their_steps_and_the_baseline_cuts_none():
    sched, ex = setup()
    first = queue_auto(sched, 1)[0]
    sched.next_batch(0.0)  # admitted: its rows are in flight on a 4-step grid
    assert sched.auto_slack == 0 and sched.shorten(8) == 0 and first.steps == 4
    base = Scheduler(8, 10_000, 0.0, 4, timer=timer(), exit_early=False)
    jobs = queue_auto(base, 10)
    core = EngineCore("m", base, ex, clock=lambda: 0.0, max_queue=0.25)
    with pytest.raises(QueueFull):  # choose-once: re-planning is off, as early exit is
        core.admit(1, job, steps=1, deadline=100.0)
    assert [j.steps for j in jobs] == [4] * 10


def test_a_cancelled_or_expired_waiting_auto_job_leaves_no_slack():
    sched, ex = setup()
    a, b = queue_auto(sched, 2)
    sched.cancel(a, 0.0)
    assert sched.auto_slack == 24
    b.deadline, sched.next_deadline = 0.5, 0.5
    sched.expire(1.0)
    assert sched.auto_slack == 0 and sched.waiting_work == 0 and not sched.waiting


def test_the_wait_the_api_sheds_by_is_the_least_admission_can_give():
    """The API processes refuse by the core's reported wait before asking it: with waiting "auto" jobs
    that is the wait once they gave up all they can, or they would refuse what the core admits."""
    sched, ex = setup()
    queue_auto(sched, 10)  # 320 row-steps, 240 of them slack: 0.4 s, 0.1 s at the least
    core = EngineCore("m", sched, ex, clock=lambda: 0.0, max_queue=0.25)
    assert admission.wait_seconds(sched) == pytest.approx(0.4)
    assert core.wait_seconds() == pytest.approx(0.1) == admission.least_wait(sched)
    base = Scheduler(8, 10_000, 0.0, 4, timer=timer(), exit_early=False)
    queue_auto(base, 10)
    assert admission.least_wait(base) == pytest.approx(0.4)  # no cutting: the real wait
