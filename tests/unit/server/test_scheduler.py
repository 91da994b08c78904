"""The step-level scheduler driven by a fake engine: mixing, admission, fairness, cancellation, auto steps."""

from __future__ import annotations

import pytest
import torch

from flowmap.samplers import guided, make_noise, sample_flowmap, uniform_grid
from server.core_process.engine_core import EngineCore, Executor
from server.core_process.scheduler import Batch, Cancelled, DeadlineExceeded, Job, QueueFull, Scheduler

SHAPE, C = [1, 2, 2], 10


class FakeEngine:
    """u(x, s, t, y) by elementwise ops only (exact whatever the batch); records its calls."""

    def __init__(self, fail_label: int | None = None):
        self.calls: list[dict] = []
        self.fail_label = fail_label

    def __call__(self, x, s, t, y):
        self.calls.append({"s": s.tolist(), "t": t.tolist(), "y": y.tolist(), "rows": len(x)})
        if self.fail_label is not None and (y == self.fail_label).any():
            raise RuntimeError("boom")
        e = lambda v: v.float().reshape(-1, 1, 1, 1)
        return -0.5 * x + 0.1 * e(y) + e(s) * x - e(t)


def job(n=1, steps=1, seed=0, label=0, guidance=1.0, deadline=None, done=None):
    return Job(make_noise(n, SHAPE, seed), [label] * n, steps, guidance, deadline, on_done=done)


def drain(sched: Scheduler, execute, now: float = 0.0, limit: int = 100) -> float:
    """Run the scheduler to idle with a fake clock (1 ms per iteration); returns the final time."""
    for _ in range(limit):
        plan = sched.next_batch(now)
        if plan is None:
            return now
        if isinstance(plan, float):
            now += plan
            continue
        sched.update(plan, execute(plan), now)
        now += 1e-3
    raise AssertionError("scheduler did not go idle")


def setup(max_batch=64, max_queue=16, max_wait=0.0, max_steps=4, **kw):
    eng = FakeEngine(**kw)
    return Scheduler(max_batch, max_queue, max_wait, max_steps), eng, Executor(eng, C, conditional=True)


def reference(j: Job, eng) -> torch.Tensor:
    """What `flowmap sample` computes for this job: sample_flowmap on the whole request alone."""
    u = guided(eng, j.guidance, C)
    return sample_flowmap(u, j.noise, uniform_grid(j.steps), torch.tensor(j.labels))


def test_one_call_mixes_steps_classes_and_guidance():
    sched, eng, ex = setup()
    jobs = [job(2, 1, 1, 3), job(1, 4, 2, 7, guidance=2.0), job(3, 2, 3, C)]
    for j in jobs:
        sched.submit(j, 0.0)
    drain(sched, ex)
    first = eng.calls[0]
    assert first["rows"] == 2 + 2 + 3  # the guided sample adds a null-label row
    assert first["y"] == [3, 3, 7, C, C, C, C]
    assert first["t"][:2] == [0.0, 0.0] and first["t"][2] == pytest.approx(0.75)
    assert first["t"][3] == pytest.approx(0.5)
    assert len(eng.calls) == 4  # = the largest step count, not the sum
    assert [c["rows"] for c in eng.calls] == [7, 5, 2, 2]
    for j in jobs:
        assert j.done and j.error is None
        torch.testing.assert_close(j.result, reference(j, FakeEngine()), rtol=0, atol=1e-6)


def test_samples_join_and_leave_at_step_boundaries():
    sched, eng, ex = setup(max_batch=4)
    a, b = job(2, 3, 1, label=1), job(4, 1, 2, label=2)
    sched.submit(a, 0.0)
    sched.submit(b, 0.0)
    drain(sched, ex)
    assert [c["y"] for c in eng.calls] == [[1, 1, 2, 2], [1, 1, 2, 2], [1, 1]]
    assert a.first_admit == b.first_admit == 0.0
    assert b.finished < a.finished


def test_admission_is_fifo_and_a_guided_head_is_not_overtaken():
    sched, eng, ex = setup(max_batch=3)
    first, guided_job, small = job(2, 2, label=1), job(1, 1, label=2, guidance=3.0), job(1, 1, label=4)
    for j in (first, guided_job, small):
        sched.submit(j, 0.0)
    drain(sched, ex)
    # one row free in call 1: the guided sample (2 rows) waits and `small` may not jump ahead of it
    assert eng.calls[0]["y"] == [1, 1]
    assert eng.calls[2]["y"] == [2, 4, C]
    assert first.finished < guided_job.finished <= small.finished


def test_big_request_does_not_starve_later_ones():
    sched, eng, ex = setup(max_batch=4, max_queue=64)
    big = job(10, 2, label=9)
    smalls = [job(1, 1, seed=i, label=i % 9) for i in range(6)]
    sched.submit(big, 0.0)
    for j in smalls:
        sched.submit(j, 0.0)
    drain(sched, ex)
    order = sorted(smalls + [big], key=lambda j: j.finished)
    assert all(j.done and j.error is None for j in order)
    assert max(c["rows"] for c in eng.calls) <= 4
    # FIFO: the smalls finish in submission order and each waits at most for work queued before it
    assert [j.id for j in order if j is not big] == [j.id for j in smalls]


def test_cancel_queued_and_running_requests():
    sched, eng, ex = setup(max_batch=2)
    running, queued, other = job(2, 4, label=5), job(1, 1, label=6), job(1, 2, label=7)
    for j in (running, queued, other):
        sched.submit(j, 0.0)
    batch = sched.next_batch(0.0)
    sched.update(batch, ex(batch), 0.0)
    sched.cancel(queued, 0.0)
    sched.cancel(running, 0.0)
    drain(sched, ex)
    assert isinstance(queued.error, Cancelled) and isinstance(running.error, Cancelled)
    assert all(6 not in c["y"] for c in eng.calls)
    assert [c["y"] for c in eng.calls[1:]] == [[7], [7]]
    assert other.error is None
    torch.testing.assert_close(other.result, reference(other, FakeEngine()), rtol=0, atol=1e-6)


def test_cancel_while_the_network_runs_drops_the_result():
    sched, eng, ex = setup()
    j = job(1, 2)
    sched.submit(j, 0.0)
    batch = sched.next_batch(0.0)
    x = ex(batch)
    sched.cancel(j, 0.0)
    sched.update(batch, x, 0.0)
    assert sched.next_batch(0.0) is None and isinstance(j.error, Cancelled)


def test_result_does_not_depend_on_batch_mates_real_net():
    """Same seed and steps give the same samples alone, in a mixed batch and via the CLI path.

    CPU matmuls with different batch sizes may differ in the last bits: compared with atol 1e-5.
    """
    from flowmap.nets import build_net

    torch.manual_seed(0)
    net = build_net({"name": "mlp", "shape": SHAPE, "width": 32, "depth": 2, "num_classes": C}).eval()
    alone = job(3, 2, seed=42, label=4, guidance=1.5)
    sched, _, _ = setup()
    ex = Executor(net, C, conditional=True)
    sched.submit(alone, 0.0)
    drain(sched, ex)
    mixed = job(3, 2, seed=42, label=4, guidance=1.5)
    for i, j in enumerate([job(5, 4, 1, 2), mixed, job(7, 1, 2, C, 3.0), job(2, 3, 4, 9)]):
        sched.submit(j, float(i))
    drain(sched, ex, now=4.0)
    with torch.inference_mode():
        cli = reference(alone, net)
    torch.testing.assert_close(mixed.result, alone.result, rtol=0, atol=1e-5)
    torch.testing.assert_close(alone.result, cli, rtol=0, atol=1e-5)


def test_wait_window_counts_from_the_first_queued_request():
    sched, eng, ex = setup(max_batch=4, max_wait=0.010)
    sched.submit(job(1), 100.0)
    assert sched.next_batch(100.004) == pytest.approx(0.006)
    sched.submit(job(1), 100.005)
    assert sched.next_batch(100.006) == pytest.approx(0.004)
    batch = sched.next_batch(100.010)
    assert isinstance(batch, Batch) and batch.rows == 2
    sched2, _, _ = setup(max_batch=2, max_wait=1.0)
    sched2.submit(job(2), 0.0)
    assert isinstance(sched2.next_batch(0.0), Batch)  # a full batch does not wait


def test_a_burst_that_fits_the_next_batch_is_never_refused():
    sched, eng, ex = setup(max_queue=1, max_batch=4)
    for i in range(4):  # four 1-row requests arrive before any iteration: they all start together
        sched.submit(job(1, 1, seed=i), 0.0)
    with pytest.raises(QueueFull):
        sched.submit(job(1, 1, seed=9), 0.0)  # a fifth would wait: the queue limit applies
    drain(sched, ex)
    assert [c["rows"] for c in eng.calls] == [4]


def test_queue_limit_and_deadline():
    sched, eng, ex = setup(max_queue=2, max_batch=2)
    late = job(1, 1, deadline=0.5)
    sched.submit(late, 0.0)
    sched.submit(job(1, 1), 0.0)
    with pytest.raises(QueueFull) as e:
        sched.submit(job(1, 1), 0.0)
    assert e.value.retry_after >= 1
    drain(sched, ex, now=1.0)
    assert isinstance(late.error, DeadlineExceeded) and len(eng.calls) == 1


def test_auto_steps_follow_deadline_and_queue():
    sched, eng, ex = setup(max_batch=8, max_steps=4)
    for rows in (1, 8):
        sched.timer.observe(rows, 0.010)  # 10 ms per iteration
    assert sched.choose_steps(job(1, None), 0.0) == 4  # no deadline: the maximum
    j = job(1, None, deadline=0.025)
    sched.submit(j, 0.0)
    assert j.steps == 2
    for i in range(8):  # a queue of 8 x 4-step single samples = 32 row-steps ahead
        sched.submit(job(1, 4, seed=i), 0.0)
    assert sched.choose_steps(job(1, None, deadline=0.045), 0.0) == 1
    assert sched.choose_steps(job(1, None, deadline=0.065), 0.0) == 2
    assert sched.choose_steps(job(1, None, deadline=10.0), 0.0) == 4


def test_request_batching_baseline_admits_only_when_empty():
    eng = FakeEngine()
    sched = Scheduler(4, 16, 0.0, 4, batching="request")
    ex = Executor(eng, C, conditional=True)
    a, b = job(1, 3, label=1), job(1, 1, label=2)
    sched.submit(a, 0.0)
    batch = sched.next_batch(0.0)
    sched.submit(b, 0.0)
    sched.update(batch, ex(batch), 0.0)
    drain(sched, ex)
    assert [c["y"] for c in eng.calls] == [[1], [1], [1], [2]]


def test_engine_core_survives_a_failing_batch():
    eng = FakeEngine(fail_label=3)
    core = EngineCore("m", Scheduler(8, 16, 0.0, 4), Executor(eng, C, conditional=True))
    seen = []
    bad = job(1, 2, label=3, done=seen.append)
    core.submit(bad)
    core.run_until_idle()
    good = job(2, 2, label=1, done=seen.append)
    core.submit(good)
    core.run_until_idle()
    assert seen == [bad, good]
    assert isinstance(bad.error, RuntimeError) and good.error is None
    torch.testing.assert_close(good.result, reference(good, FakeEngine()), rtol=0, atol=1e-6)


def test_guided_samples_wider_than_the_batch_run_alone_and_right():
    sched, eng, ex = setup(max_batch=1)
    g, plain = job(3, 2, seed=5, label=4, guidance=2.0), job(2, 1, seed=6, label=1)
    sched.submit(g, 0.0)
    sched.submit(plain, 0.0)
    assert sched.waiting_rows() == 3 * 2 + 2
    drain(sched, ex)
    assert all(c["rows"] <= 2 for c in eng.calls)
    for j in (g, plain):
        torch.testing.assert_close(j.result, reference(j, FakeEngine()), rtol=0, atol=1e-6)
    assert sched.waiting_rows() == 0 and sched.waiting_work == 0


def test_auto_steps_with_a_long_queue_stay_cheap(monkeypatch):
    sched, eng, ex = setup(max_batch=8, max_queue=1000, max_steps=64)
    sched.timer.observe(8, 0.001)
    for i in range(500):
        sched.submit(job(4, 64, seed=i), 0.0)
    calls = []
    real = sched.start_delay
    monkeypatch.setattr(sched, "start_delay", lambda rows: calls.append(rows) or real(rows))
    monkeypatch.setattr(sched, "_admit_counts", lambda *a: pytest.fail("simulated a 500-request queue"))
    assert sched.choose_steps(job(1, None, deadline=10.0), 0.0) == 1  # 500 x 4 x 64 row-steps ahead
    assert sched.choose_steps(job(1, None, deadline=1e6), 0.0) == 64
    assert calls == [1, 1]  # once per decision, not once per candidate step count


def test_auto_steps_estimate_the_whole_iteration_not_only_the_network_call():
    """The call timer learns each iteration's period (start to start: network call + bookkeeping + sending
    outputs + receiving), so "auto" plans with what a step really costs the requests in flight."""
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731

    def engine(x, s, t, y):
        now[0] += 0.001  # the network call: 1 ms
        return FakeEngine()(x, s, t, y)

    def sent(j):
        now[0] += 0.002  # sending a finished request's output: 2 ms

    sched = Scheduler(8, 16, 0.0, 4)
    core = EngineCore("m", sched, Executor(engine, C, conditional=True), clock=clock)
    for i in range(4):
        core.submit(job(1, 1 + i % 2, seed=i, done=sent))  # 1- and 2-step jobs: outputs sent every step
    core.run_until_idle()
    # iterations of 4 rows (two jobs finish: 1 + 2 x 2 = 5 ms) and 2 rows (two finish: 5 ms)
    assert sched.timer.predict(4) == pytest.approx(0.005)
    assert sched.timer.predict(2) == pytest.approx(0.005)
    j = job(1, None, deadline=now[0] + 0.012)  # 5 ms a step predicted: 2 steps fit, 3 would not
    assert sched.choose_steps(j, now[0]) == 2


def test_auto_plans_to_finish_the_margin_before_the_deadline():
    sched, eng, ex = setup(max_batch=8, max_steps=4)
    sched.timer.observe(1, 0.010)  # 10 ms per iteration
    assert sched.choose_steps(job(1, None, deadline=0.045), 0.0) == 4
    j = job(1, None, deadline=0.045)
    j.margin = 0.020  # 20 ms of the 45 go to the result's way back: two 10 ms steps fit
    assert sched.choose_steps(j, 0.0) == 2
    j.margin = 0.045
    assert sched.choose_steps(j, 0.0) == 1  # never fewer than one step
