"""The engine core of one model: scheduler + executor, and the loop body schedule -> execute -> update.

This is the part vLLM v1 calls EngineCore. It does no I/O: `server.core_process` feeds it requests
from the API processes and sends back what `on_done` reports. A failing network call fails the
requests in that batch, never the core.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch
from torch import Tensor

from flowmap.guidance import cfg_mix
from flowmap.reward import evaluate_reward
from flowmap.steering import resample_keyed
from server.common.stats import IterationStats
from server.core_process import admission, ops
from server.core_process.scheduler import Batch, Job, Scheduler, SchedulingError, SteerRun

log = logging.getLogger("flowmap.server")


class Executor:
    """Runs one Batch: per-row (x, s, t, y) -> one engine call (guided rows twice) -> flow-map step."""

    def __init__(self, engine: Callable, null_label: int, conditional: bool, device="cpu"):
        self.engine, self.null_label, self.conditional = engine, null_label, conditional
        self.device = torch.device(device)

    def warmup(self) -> None:
        """The engine's own warm-up (compilation, CUDA graphs, allocator)."""
        warm = getattr(self.engine, "warmup", None)
        if warm is not None:
            warm()

    def __call__(self, batch: Batch) -> Tensor:
        if torch.is_inference_mode_enabled():  # the core's loop runs in it: no guard per call
            return self._run(batch)
        with torch.inference_mode():
            return self._run(batch)

    def _run(self, batch: Batch) -> Tensor:
        dev = self.device
        x, s, t, w, y = batch.x, batch.s, batch.t, batch.w, batch.y
        if not self.conditional:
            y = torch.zeros_like(y)
        if dev.type != "cpu":  # the batch's small tensors are CPU views of the scheduler's arrays
            s, t, y = s.to(dev), t.to(dev), y.to(dev)
        if batch.keys is None:
            u = self._velocity(batch, x, s, t, y, w)
            self._preview(batch, x, u, s)
            return ops.step(x, u, s, t)  # [N, *shape]
        r = (batch.keys != 0).to(dev)  # re-noising rows: the network jumps them to data (t = 0)
        u = self._velocity(batch, x, s, torch.where(r, 0.0, t), y, w)
        if batch.steer:
            x, u = self._resample(batch.steer, x, u, s)
        self._preview(batch, x, u, s)
        out = ops.step(x, u, s, t)
        ri = r.nonzero().flatten()
        out[ri] = ops.renoise(x[ri], u[ri], s[ri], t[ri], batch.keys.to(dev)[ri], batch.k.to(dev)[ri])
        return out

    def _preview(self, batch: Batch, x: Tensor, u: Tensor, s: Tensor) -> None:
        """The rows that asked for previews: their jump to data x - s u with the step's own u (no extra
        network call). Exact X_{s,0} where u = u(x, s, 0): re-noising rows, and every row's last step;
        on a flow-map row's earlier steps, the jump extrapolated with u(x, s, t) (the x0-prediction)."""
        if batch.preview is None:
            return
        p = batch.preview.to(self.device)
        batch.x0 = ops.step(x[p], u[p], s[p], torch.zeros_like(s[p]))  # [P, *shape]

    def _resample(self, runs: list[SteerRun], x: Tensor, u: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """Steered rows: reward of the jump to data x0 = x - s u, resample each particle group by the
        potential's increment (draws keyed by the group and step), and reorder (x, u) so the re-noise
        step below jumps every row to its chosen ancestor's x0 and re-noises it with the row's own key."""
        perm = torch.arange(len(x), device=x.device)
        for run in runs:
            a, b, p = run.start, run.stop, run.job.steer.particles
            try:
                x0 = ops.step(x[a:b], u[a:b], s[a:b], torch.zeros_like(s[a:b]))
                pot = run.job.steer.scale * evaluate_reward(run.job.steer.reward, x0).double()
                logw = (pot - run.prev.to(pot.device)).view(-1, p)
                idx = resample_keyed(logw, run.job.steer.select, run.keys, run.k)
            except Exception as e:  # a failing reward fails its own request, never its batch-mates
                log.exception("model: reward failed for a steered request")
                run.error = e
                continue
            run.pot = pot[idx]
            perm[a:b] = a + idx.to(x.device)
        return x[perm], u[perm]

    def _velocity(self, batch: Batch, x: Tensor, s: Tensor, t: Tensor, y: Tensor, w: Tensor) -> Tensor:
        """u(x, s, t, y) per row, classifier-free guided where w != 1 (the null rows go after the batch)."""
        dev = self.device
        if batch.rows == batch.n:  # no guided row: one plain call
            u = self.engine(x, s, t, y)
        else:  # the null-label copies of the guided rows go after the batch
            g = (w != 1.0).nonzero().flatten()  # guided rows: [G]
            gd = g.to(dev)
            null = torch.full_like(gd, self.null_label)
            u = self.engine(
                torch.cat([x, x[gd]]), torch.cat([s, s[gd]]), torch.cat([t, t[gd]]), torch.cat([y, null])
            )
            u, u_null = u[: len(x)].clone(), u[len(x) :]
            u[gd] = cfg_mix(u[gd], u_null, w[g].to(dev))
        return u


class EngineCore:
    """One model's scheduler and executor; `step()` runs at most one iteration and says what is next."""

    def __init__(
        self,
        name: str,
        scheduler: Scheduler,
        executor: Callable[[Batch], Tensor],
        on_iteration: Callable[[IterationStats], None] | None = None,
        clock=time.monotonic,
        max_queue: float = math.inf,
    ):
        self.name, self.scheduler, self.executor = name, scheduler, executor
        self.on_iteration, self.clock = on_iteration, clock
        self.max_queue = max_queue  # seconds: the longest predicted queue wait a new request is given
        scheduler.queue_bound = max_queue  # "auto" steps shrink as the queue nears it (demand.py)
        self._stats: list[IterationStats] = []
        self._last: tuple[int, float] | None = None  # (rows, start) of the iteration just run

    @property
    def device(self) -> torch.device:
        return self.executor.device

    def warmup(self) -> None:
        self.executor.warmup()

    def submit(self, job: Job) -> None:
        """Queue a job; raises scheduler.QueueFull. Completion arrives through job.on_done."""
        self.scheduler.submit(job, self.clock())

    def admit(
        self,
        rows: int,
        make: Callable[[], Job],
        steps: int = 1,
        deadline: float = math.inf,
        margin=0.0,
        auto: bool = False,
    ) -> Job:
        """Queue the job `make()` builds if `rows` more network rows have room and are predicted to finish
        `steps` steps by `deadline` less `margin` within the queue bound (else scheduler.QueueFull, before
        `make` runs: a refusal draws no noise), and let waiting jobs join now when the core is between
        iterations (a step boundary) and no batching window holds them back. Every call counts as an
        arrival, admitted or not (`auto`: its steps are chosen at submission, from the arrivals before it:
        a lone large request must not count as a rate of its own rows per second; scheduler.demand).
        When it fits only once waiting "auto" jobs give up steps (admission.check), they are cut after
        `make` succeeds, and an "auto" job admitted so keeps no more steps than they do."""
        arrive = lambda: self.scheduler.demand.arrive(self.clock(), rows, None if auto else steps)
        try:
            self.scheduler.check_room(rows)
            budget = deadline - margin - self.clock()
            cut = admission.check(self.scheduler, rows, steps, budget, self.max_queue)
        except SchedulingError:
            arrive()
            raise
        job = make()  # may raise: then nothing was cut
        most = self.scheduler.shorten(cut) if cut else None
        self.scheduler.submit(job, self.clock(), most)
        arrive()
        if self.scheduler.max_wait == 0 or self.scheduler.in_flight():
            self.scheduler.admit_waiting(self.clock())
        return job

    def cancel(self, job: Job, since: float | None = None) -> None:
        """`since`: when the API process cancelled it (time.monotonic(), which every process on the host
        shares), for the time until its rows are dropped (flowmap_cancel_free_seconds)."""
        self.scheduler.cancel(job, self.clock(), since)

    def wait_seconds(self) -> float:
        """The shortest queue wait admission can give a request arriving now, once waiting "auto" jobs give
        up steps (server.core_process.admission.least_wait): what the API processes shed by."""
        return admission.least_wait(self.scheduler)

    def step(self, emit: bool = True) -> float | None:
        """One iteration if there is work: then 0.0; else seconds to wait (batching window) or None (idle).

        emit=False keeps the iteration's stats until `emit()`, so a caller can send the finished
        requests first and record metrics after, off the latency path."""
        start = self.clock()
        self._observe(start)
        plan = self.scheduler.next_batch(start)
        if not isinstance(plan, Batch):
            if self.scheduler.dropped:  # the last rows in flight were dropped: no call, but count them
                self._stats.append(self._record(None, 0.0, ok=True))
                if emit:
                    self.emit()
            return plan
        t0 = self.clock()
        try:
            x_next = self.executor(plan)
        except Exception as e:  # a failing batch fails its own requests, never the core
            log.exception("model %s: network call failed for %d samples", self.name, plan.n)
            self.scheduler.fail(plan, e, self.clock())
            self._stats.append(self._record(plan, self.clock() - t0, ok=False))
        else:
            dt = self.clock() - t0
            self._last = (plan.rows, start)
            self.scheduler.update(plan, x_next, self.clock())
            self._stats.append(self._record(plan, dt, ok=True))
        if emit:
            self.emit()
        return 0.0

    def _observe(self, now: float) -> None:
        """Feed "auto" steps' estimate with the last iteration's whole period, start to start: scheduling,
        the network call, retiring and sending outputs, metrics, and the messages received before this
        step (a step's real cost to the requests in flight; the network call alone is about half of it on
        CPU). The caller steps again at once after a batch, so the period holds no idle wait."""
        if self._last is not None:
            rows, start = self._last
            self.scheduler.observe(rows, now - start)
            self._last = None

    def run_until_idle(self, limit: int = 1_000_000) -> None:
        """Step until nothing is queued or in flight (warm-up, tests); waits out batching windows."""
        for _ in range(limit):
            plan = self.step()
            if plan is None:
                return
            if plan > 0:
                time.sleep(plan)

    def _record(self, batch: Batch | None, seconds: float, ok: bool) -> IterationStats:
        """The stats of one network call on `batch` (None: no call, only rows dropped)."""
        return IterationStats(
            model=self.name,
            rows=batch.rows if batch else 0,
            samples=batch.n if batch else 0,
            seconds=seconds,
            queue_depth=self.scheduler.queued(),
            in_flight=self.scheduler.in_flight(),
            ok=ok,
            queue_seconds=admission.wait_seconds(self.scheduler),
            dropped=self.scheduler.take_dropped(),
            freed=self.scheduler.take_freed(),
        )

    def emit(self) -> None:
        """Hand the iterations' stats to `on_iteration` (metrics must never stop the core)."""
        stats, self._stats = self._stats, []
        if self.on_iteration is None:
            return
        for s in stats:
            try:
                self.on_iteration(s)
            except Exception:
                log.exception("stats callback failed")
