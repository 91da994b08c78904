"""Previews in the engine core: the jump to data of every step, for the rows that asked only, against the
flow map run by hand; rows of a request ended early are dropped at the next step boundary and counted."""

from __future__ import annotations

import pytest
import torch

from flowmap.samplers import make_noise, uniform_grid
from server.core_process.engine_core import EngineCore, Executor
from server.core_process.scheduler import Batch, Cancelled, Job, Scheduler
from tests.unit.server.test_scheduler import SHAPE, C, FakeEngine, drain


def by_hand(
    eng, noise: torch.Tensor, labels: list[int], steps: int
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each step's jump to data x - s u(x, s, t) and the final sample, one request alone."""
    x, grid, y, jumps = noise, uniform_grid(steps), torch.tensor(labels), []
    for k in range(steps):
        s, t = grid[k].expand(len(x)), grid[k + 1].expand(len(x))
        u = eng(x, s, t, y)
        jumps.append(x - s.view(-1, 1, 1, 1) * u)
        x = x + (t - s).view(-1, 1, 1, 1) * u
    return jumps, x


def test_previews_are_each_steps_jump_to_data_for_the_rows_that_asked():
    eng, got = FakeEngine(), {}
    sched, ex = Scheduler(2, 16, 0.0, 4), Executor(eng, C, conditional=True)
    plain = Job(make_noise(1, SHAPE, 1), [3], 2)
    streamed = Job(make_noise(3, SHAPE, 2), [1, 2, 3], 3, on_preview=lambda j, k, x0: got.setdefault(k, x0))
    batches = []
    sched.submit(plain, 0.0)
    sched.submit(streamed, 0.0)

    def execute(plan: Batch) -> torch.Tensor:
        batches.append(None if plan.preview is None else plan.preview.tolist())
        return ex(plan)

    drain(sched, execute)  # 3 samples in a batch of 2: admitted in parts, previews handed over whole
    jumps, final = by_hand(FakeEngine(), streamed.noise, streamed.labels, 3)
    assert sorted(got) == [1, 2, 3]
    for k in (1, 2, 3):
        torch.testing.assert_close(got[k], jumps[k - 1], rtol=0, atol=1e-6)
    assert torch.equal(got[3], streamed.result)  # the last step lands on t = 0: the result itself
    torch.testing.assert_close(streamed.result, final, rtol=0, atol=1e-6)
    assert batches[0] == [1]  # the plain request's row never previews


def test_no_preview_is_computed_when_no_request_asked():
    sched, ex = Scheduler(8, 16, 0.0, 4), Executor(FakeEngine(), C, conditional=True)
    sched.submit(Job(make_noise(4, SHAPE, 0), [0] * 4, 3), 0.0)
    seen = []
    drain(sched, lambda plan: (seen.append((plan.preview, plan.x0)), ex(plan))[1])
    assert seen and all(p is None and x0 is None for p, x0 in seen)


def test_a_cancelled_requests_rows_are_dropped_at_the_next_step_and_counted():
    stats, eng = [], FakeEngine()
    sched = Scheduler(8, 16, 0.0, 4)
    core = EngineCore("toy", sched, Executor(eng, C, conditional=True), on_iteration=stats.append)
    long, other = Job(make_noise(4, SHAPE, 0), [0] * 4, 4), Job(make_noise(2, SHAPE, 1), [1] * 2, 4)
    core.submit(long)
    core.submit(other)
    core.step()
    core.cancel(long)
    core.step()  # the next boundary: only the other request's 2 rows run
    assert eng.calls[-1]["rows"] == 2 and sched.in_flight() == 2
    assert sum(s.dropped for s in stats) == 4
    core.cancel(other)
    assert core.step() is None  # nothing left to run: the drop is still reported
    assert sum(s.dropped for s in stats) == 6 and sched.in_flight() == 0 and not sched.jobs


def test_the_time_from_a_cancel_to_its_rows_drop_is_reported_once():
    """A cancel sent at 10.0 (the API's clock) reaches the core mid-step; the rows leave at the next boundary
    (the core's clock at 10.03): 30 ms reported, in that iteration's stats only. A waiting job's cancel
    frees no rows and is not reported; nor is a cancel without a time (a closed connection's jobs) or with
    one that cannot be (after now, or an hour before): their rows are dropped all the same."""
    stats, now = [], [10.0]
    sched = Scheduler(4, 16, 0.0, 4)
    executor = Executor(FakeEngine(), C, conditional=True)
    core = EngineCore("toy", sched, executor, stats.append, clock=lambda: now[0])
    a, b, waiting = (Job(make_noise(2, SHAPE, i), [0, 1], 4) for i in range(3))
    for j in (a, b, waiting):
        core.submit(j)
    core.step()
    now[0] = 10.02
    core.cancel(a, since=10.0)
    core.cancel(waiting, since=10.0)  # never admitted (the batch holds 4 rows): nothing in flight to free
    now[0] = 10.03
    core.step()
    assert [s.freed for s in stats] == [[], [pytest.approx(0.03)]]
    for since in (99.0, 10.0 - 3600, None):
        job = Job(make_noise(2, SHAPE, 5), [0, 1], 4)
        core.submit(job)
        core.step()
        core.cancel(job, since=since)
        core.step()
        assert stats[-1].freed == [] and job.done and not sched.cancelled_at
    assert b.done and b.error is None  # 4 steps made meanwhile
    last = Job(make_noise(2, SHAPE, 6), [0, 1], 4)
    core.submit(last)
    core.step()
    core.cancel(last, since=now[0])
    assert core.step() is None and stats[-1].freed == [0.0] and sched.in_flight() == 0 and not sched.jobs


def test_a_job_ended_while_results_are_handed_out_does_not_stop_the_core():
    """A result's send can fail mid-update (a closed API connection), and the core then cancels that
    connection's other jobs: a batch-mate finishing in the same step must not be looked up after it."""
    sched = Scheduler(8, 16, 0.0, 4)
    core = EngineCore("toy", sched, Executor(FakeEngine(), C, conditional=True), clock=lambda: 1.0)
    b = Job(make_noise(2, SHAPE, 1), [0, 1], 1)
    a = Job(make_noise(2, SHAPE, 0), [0, 1], 1, on_done=lambda j: core.cancel(b, since=1.0))
    core.submit(a)
    core.submit(b)
    core.step()
    assert a.error is None and a.result.shape[0] == 2 and isinstance(b.error, Cancelled)
    assert sched.in_flight() == 0 and not sched.jobs and not sched.cancelled_at


def test_a_failed_call_times_the_cancels_it_drops():
    sched = Scheduler(4, 16, 0.0, 4)
    a, b = Job(make_noise(2, SHAPE, 0), [0, 1], 4), Job(make_noise(2, SHAPE, 1), [0, 1], 4)
    sched.submit(a, 0.0)
    sched.submit(b, 0.0)
    batch = sched.next_batch(0.0)
    sched.cancel(a, 0.1, since=0.05)
    sched.fail(batch, RuntimeError("boom"), 0.2)
    assert not sched.cancelled_at and sched.take_freed() == [pytest.approx(0.15)] and b.done


def test_a_steered_request_previews_one_row_per_sample_ending_at_its_result():
    from flowmap.samplers import sample_keys
    from server.core_process.scheduler import Steer

    got, n, p = {}, 2, 3
    steer = Steer(particles=p, reward=lambda x0: x0.flatten(1).sum(1), scale=1.0)
    job = Job(
        make_noise(n * p, SHAPE, 4),
        [1] * (n * p),
        2,
        keys=sample_keys(4, n * p).tolist(),
        steer=steer,
        on_preview=lambda j, k, x0: got.setdefault(k, x0),
    )
    sched = Scheduler(16, 16, 0.0, 4)
    sched.submit(job, 0.0)
    drain(sched, Executor(FakeEngine(), C, conditional=True))
    assert sorted(got) == [1, 2] and all(x0.shape == (n, *SHAPE) for x0 in got.values())
    torch.testing.assert_close(got[2], job.result, rtol=0, atol=1e-6)
