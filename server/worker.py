"""One worker per model: owns the engine and runs schedule -> execute -> update in its own thread.

The event loop only submits/cancels jobs (under a lock) and is told of completions through each
job's `on_done` callback; the network call runs in the worker thread, never on the event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import torch
from torch import Tensor

from server import ops
from server.scheduler import Batch, Job, Scheduler
from server.stats import IterationStats

log = logging.getLogger("flowmap.server")


class Executor:
    """Runs one Batch: per-sample (x, s, t, y) -> one engine call -> guidance mix -> step."""

    def __init__(self, engine: Callable, null_label: int, conditional: bool, device="cpu"):
        self.engine, self.null_label, self.conditional = engine, null_label, conditional
        self.device = torch.device(device)

    def inputs(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        smp = batch.samples
        x = torch.stack([s.x for s in smp])  # [N, *shape]
        st = torch.tensor([(s.s, s.t) for s in smp], dtype=torch.float32)  # [N, 2]
        y = torch.tensor([s.label if self.conditional else 0 for s in smp], dtype=torch.long)
        w = torch.tensor([s.job.guidance for s in smp], dtype=torch.float32)
        dev = self.device
        return x, st[:, 0].to(dev), st[:, 1].to(dev), y.to(dev), w.to(dev)

    @torch.inference_mode()
    def __call__(self, batch: Batch) -> Tensor:
        x, s, t, y, w = self.inputs(batch)
        g = (w != 1.0).nonzero().flatten()  # guided samples: [G]
        if len(g):  # classifier-free guidance (Ho & Salimans 2022): u = u_null + w (u_cond - u_null)
            null = torch.full_like(g, self.null_label)
            u = self.engine(
                torch.cat([x, x[g]]), torch.cat([s, s[g]]), torch.cat([t, t[g]]), torch.cat([y, null])
            )
            u, u_null = u[: len(x)].clone(), u[len(x) :]
            wg = w[g].reshape(-1, *([1] * (x.dim() - 1)))
            u[g] = u_null + wg * (u[g] - u_null)
        else:
            u = self.engine(x, s, t, y)
        return ops.step(x, u, s, t)  # [N, *shape]


class ModelWorker:
    """A model's scheduler + executor + thread. `on_iteration` receives IterationStats."""

    def __init__(
        self,
        name: str,
        scheduler: Scheduler,
        executor: Callable[[Batch], Tensor],
        on_iteration: Callable[[IterationStats], None] | None = None,
        clock=time.monotonic,
    ):
        self.name, self.scheduler, self.executor = name, scheduler, executor
        self.on_iteration, self.clock = on_iteration, clock
        self.cond = threading.Condition()
        self._stop = False
        self.thread = threading.Thread(target=self._loop, name=f"flowmap-worker-{name}", daemon=True)

    # ------------------------------------------------------------ called from the event loop
    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self.cond:
            self._stop = True
            self.cond.notify_all()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def submit(self, job: Job) -> None:
        """Queue a job; raises scheduler.QueueFull. Completion arrives through job.on_done."""
        with self.cond:
            self.scheduler.submit(job, self.clock())
            self.cond.notify_all()

    def cancel(self, job: Job) -> None:
        with self.cond:
            self.scheduler.cancel(job, self.clock())

    def predict_seconds(self, rows: int, steps: int) -> float:
        with self.cond:
            return self.scheduler.predict_seconds(rows, steps)

    def load(self) -> tuple[int, int]:
        """(queued requests, samples in flight)."""
        with self.cond:
            return len(self.scheduler.waiting), self.scheduler.in_flight()

    # ------------------------------------------------------------ the worker thread
    def _next(self) -> Batch | None:
        with self.cond:
            while not self._stop:
                plan = self.scheduler.next_batch(self.clock())
                if isinstance(plan, Batch):
                    return plan
                self.cond.wait(plan)  # None: until a submit; float: the rest of the wait window
        return None

    def _loop(self) -> None:
        while (batch := self._next()) is not None:
            self.run_once(batch)

    def run_once(self, batch: Batch) -> None:
        t0 = self.clock()
        try:
            x_next = self.executor(batch)
        except Exception as e:  # a failing batch fails its own requests, never the worker
            log.exception("model %s: network call failed for %d samples", self.name, len(batch.samples))
            with self.cond:
                self.scheduler.fail(batch, e, self.clock())
            self._emit(batch, self.clock() - t0, ok=False)
            return
        dt = self.clock() - t0
        with self.cond:
            self.scheduler.timer.observe(batch.rows, dt)
            self.scheduler.update(batch, x_next, self.clock())
        self._emit(batch, dt, ok=True)

    def _emit(self, batch: Batch, seconds: float, ok: bool) -> None:
        if self.on_iteration is None:
            return
        with self.cond:
            depth, flight = len(self.scheduler.waiting), self.scheduler.in_flight()
        try:
            self.on_iteration(
                IterationStats(self.name, batch.rows, len(batch.samples), seconds, depth, flight, ok)
            )
        except Exception:  # metrics must never stop the worker
            log.exception("stats callback failed")
