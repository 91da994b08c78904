"""The batch cap re-decided from served iterations (server.core_process.cap), alone and in a core."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from flowmap.samplers import make_noise
from server.common.settings import ServerSettings
from server.core_process import admission
from server.core_process.build import warm_up
from server.core_process.cap import CapTuner
from server.core_process.engine_core import EngineCore, Executor
from server.core_process.scheduler import Job, Scheduler

SHAPE, C = [1, 2, 2], 10
MS = 1e-3


def digits_call(rows: int) -> float:
    """Seconds of one digits call on ONNX Runtime here, by padded rows: 4.1 ms at 64, 7.7 at 128."""
    return (0.5 + 0.05625 * rows) * MS


DIGITS = {b: digits_call(b) for b in (1, 2, 4, 8, 16, 32, 64, 128)}
MNIST = {1: 6.5 * MS, 2: 9.4 * MS, 4: 17.1 * MS, 8: 32.0 * MS, 16: 61.6 * MS, 32: 125.9 * MS}


def feed(tuner: CapTuner, rows: int, call: float, overhead: float, n: int) -> list[int]:
    return [c for _ in range(n) if (c := tuner.observe(rows, call, call + overhead)) is not None]


def test_idle_costs_alone_keep_the_start_up_cap():
    """No cost outside the call: the served costs are the idle ones, so the knee stays where it was."""
    tuner = CapTuner(DIGITS, 0.9, cap=64, every=50)
    assert feed(tuner, 64, DIGITS[64], 0.0, 500) == [] and tuner.cap == 64


def test_a_fixed_cost_per_iteration_raises_the_cap_where_it_pays():
    """digits: ~0.9 ms of every served iteration is outside the network call (py-spy: 17% at 64 rows). If
    that is paid once per iteration, 128 rows make 16% more rows/s than 64, past the 0.9 knee: the cap
    rises to 128 at the first decision (`every` busy iterations), not before."""
    tuner = CapTuner(DIGITS, 0.9, cap=64, every=50)
    assert feed(tuner, 64, DIGITS[64], 0.9 * MS, 49) == []
    assert feed(tuner, 64, DIGITS[64], 0.9 * MS, 1) == [128]
    served = tuner.served_costs()
    assert served[64] == pytest.approx(5.0 * MS) and served[128] == pytest.approx(8.6 * MS)


def test_a_cost_per_request_takes_the_raise_back():
    """If the cost outside the call grows with the rows (per request: receiving, retiring, sending), 128
    rows pay twice 64's 1.5 ms and gain under 5%: measured at 128 once the cap got there, the raise is
    taken back, and with both sizes measured the cap stays at 64 (no ratchet upward)."""
    tuner = CapTuner(DIGITS, 0.9, cap=64, every=50)
    assert feed(tuner, 64, DIGITS[64], 1.5 * MS, 50) == [128]  # a fixed 1.5 ms would make 128 pay 21%
    assert feed(tuner, 128, DIGITS[128], 3.0 * MS, 50) == [64]
    assert tuner.served_costs()[128] == pytest.approx(10.7 * MS)
    assert feed(tuner, 64, DIGITS[64], 1.5 * MS, 500) == [] and tuner.cap == 64


def test_between_served_sizes_the_rest_is_a_line():
    """The rest of an iteration at an unserved bucket: a line through the two nearest served ones."""
    tuner = CapTuner(DIGITS, 0.9, cap=16, every=10_000)
    feed(tuner, 16, DIGITS[16], 1.0 * MS, 30)
    feed(tuner, 64, DIGITS[64], 2.0 * MS, 30)
    served = tuner.served_costs()
    assert served[32] == pytest.approx(DIGITS[32] + 1.0 * MS + (2.0 - 1.0) * MS * 16 / 48)
    assert served[128] == pytest.approx(DIGITS[128] + 1.0 * MS + (2.0 - 1.0) * MS * 112 / 48)
    assert served[16] == pytest.approx(DIGITS[16] + 1.0 * MS)  # served: its own measurement


def test_mnist_keeps_its_small_batches():
    """mnist: a call of 8 rows takes 32 ms; 3 ms around it do not move the knee."""
    tuner = CapTuner(MNIST, 0.9, cap=8, every=50)
    assert feed(tuner, 8, MNIST[8], 3 * MS, 500) == [] and tuner.cap == 8


def test_the_engine_slower_under_load_is_not_taken_for_overhead():
    """Another process on the CPU slows the call itself by 20%: that scales every batch size alike, so it
    moves no knee (counted as a cost outside the call it would have raised mnist's cap to 16 rows)."""
    tuner = CapTuner(MNIST, 0.9, cap=8, every=50)
    assert feed(tuner, 8, 1.2 * MNIST[8], 0.5 * MS, 500) == []
    assert tuner.served_costs()[16] == pytest.approx(1.2 * MNIST[16] + 0.5 * MS)
    wrong = {b: c + (1.2 - 1) * MNIST[8] + 0.5 * MS for b, c in MNIST.items()}  # all of it as a fixed cost
    assert admission.batch_cap(wrong, 0.9) == 16


def test_iterations_of_a_quiet_core_do_not_count():
    """Iterations filling less than half the cap say nothing about the cap's own size."""
    tuner = CapTuner(DIGITS, 0.9, cap=64, every=50)
    assert feed(tuner, 31, DIGITS[32], 5 * MS, 500) == [] and tuner.seen == 0
    assert tuner.observe(64, 0.0, 0.001) is None and tuner.observe(64, 0.002, 0.001) is None  # clock steps


@pytest.mark.parametrize("cap", [64, 128])
def test_a_cap_at_the_edge_stays_where_it_is(cap):
    """64 rows make 92% of 128's rows/s, both measured: 0.9 would pick 64 and the stricter 0.95 picks 128,
    so a cap at either stays (no flapping between two sizes); at 97% a cap of 128 comes down to 64."""
    r128 = 16.0 / MS  # rows per second
    tuner = CapTuner(DIGITS, 0.9, cap=cap, every=40, alpha=1.0)
    feed(tuner, 64, DIGITS[64], 64 / (0.92 * r128) - DIGITS[64], 20)
    assert feed(tuner, 128, DIGITS[128], 128 / r128 - DIGITS[128], 200) == [] and tuner.cap == cap
    feed(tuner, 64, DIGITS[64], 64 / (0.97 * r128) - DIGITS[64], 40)
    assert tuner.cap == 64


def test_a_bad_cost_table_is_refused():
    with pytest.raises(ValueError, match="positive"):
        CapTuner({8: 0.0}, 0.9, cap=8)


def test_a_serving_core_raises_its_cap_when_iterations_pay_a_fixed_cost():
    """End to end on a fake clock: the warm-up measures digits' idle costs and caps at 64 rows; serving,
    every iteration also pays 0.9 ms outside the call (here: the stats callback), so after `batch_retune`
    busy iterations the scheduler fills 128 rows, and reports it with the iteration's stats."""
    clock, overhead, caps = [0.0], [0.0], []

    class Digits:
        def __call__(self, x, s, t, y):
            clock[0] += digits_call(len(x))
            return -0.5 * x

    def on_iteration(stats):
        clock[0] += overhead[0]
        caps.append(stats.batch_cap)

    sched = Scheduler(128, 10_000, 0.0, 4)
    ex = Executor(Digits(), C, conditional=True)
    core = EngineCore("m", sched, ex, on_iteration=on_iteration, clock=lambda: clock[0])
    warm_up(core, SimpleNamespace(name="m", shape=SHAPE), ServerSettings(batch_knee=0.9, batch_retune=100))
    assert sched.max_batch == 64 and core.tuner is not None
    overhead[0] = 0.9 * MS
    for i in range(600):  # 8 samples x 2 steps each: 100 iterations of 64 rows, then the rest at 128
        core.submit(Job(make_noise(8, SHAPE, i), [0] * 8, 2))
    core.run_until_idle()
    assert sched.max_batch == 128 and caps[-1] == 128
    first = caps.index(64)  # the first served iteration (the warm-up's ran under the engine's 128)
    assert caps.index(128, first) - first >= 100  # raised after `batch_retune` busy iterations, not before


def test_batch_retune_0_keeps_the_start_up_cap():
    clock = [0.0]

    class Digits:
        def __call__(self, x, s, t, y):
            clock[0] += digits_call(len(x))
            return -0.5 * x

    sched = Scheduler(128, 10_000, 0.0, 4)
    core = EngineCore("m", sched, Executor(Digits(), C, conditional=True), clock=lambda: clock[0])
    warm_up(core, SimpleNamespace(name="m", shape=SHAPE), ServerSettings(batch_knee=0.9, batch_retune=0))
    assert sched.max_batch == 64 and core.tuner is None
