"""One engine-core process per model: load the model and its engine, warm up, report Ready, then serve
Generate / Cancel messages from the API processes (one Unix-socket connection each, server.common.frames)
until SIGTERM, or until the supervisor that started it is gone.

`python -m server.core_process --index I --model M --dir D --settings JSON` (started by the supervisor).
The loop: take every message waiting (never blocking while work is in flight), run one iteration of
the engine core, send what finished. A lone request on an idle core starts at once; whatever arrives
while a network call runs joins at the next step boundary.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import time

import torch
import zmq

from flowmap import __version__
from flowmap.checkpoint import Model
from flowmap.errors import UserError
from flowmap.reward import make_reward
from flowmap.samplers import make_noise, sample_keys
from server.common import messages as m
from server.common import ranges
from server.common import steer as steering
from server.common.frames import MAX_FRAME, core_path
from server.common.heap import freeze_startup_heap
from server.common.settings import ServerSettings
from server.common.spec import rows_per_sample
from server.common.steer import SteerParams
from server.core_process import ops
from server.core_process.build import build_core, precision_of, samplers_of, warm_up
from server.core_process.engine_core import EngineCore
from server.core_process.link import Listener
from server.core_process.scheduler import Cancelled, DeadlineExceeded, Job, QueueFull, Steer

log = logging.getLogger("flowmap.server")
IDLE_POLL_S = 0.5  # an idle core wakes this often to notice a vanished supervisor
RECEIVE_MAX = 256  # messages taken per loop turn
PARENT_CHECK_S = 1.0  # how often the loop checks that the supervisor is still there
EMIT_EVERY_S = 0.05  # while steps run back to back, iteration metrics are recorded this often


class RewardUnavailable(Exception):
    """A steered request whose reward cannot be built: `kind` invalid (refused by the library) or failed."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class CoreServer:
    """The message side of one engine core: requests in, outputs out, keyed by (API connection, id)."""

    def __init__(self, core: EngineCore, model: Model, settings: ServerSettings, link: Listener | None):
        self.core, self.model, self.settings, self.link = core, model, settings, link
        self.owner: dict[int, tuple[int, int]] = {}  # job id -> (API connection, request id)
        self.jobs: dict[tuple[int, int], Job] = {}
        self.outbox: list[tuple[int, bytes]] = []  # only without a link (tests read it)
        self.rewards: dict[str, object] = {}  # reward spec -> callable (checked specs only)
        self.samplers = samplers_of(model)[0]
        self.closed: set[int] = set()  # API connections closed since the last receive(): cancelled there

    def handle(self, ident: int, frame: bytes) -> None:
        """One frame from an API process; a frame that is not a well-formed message is dropped (logged),
        never allowed to stop the core."""
        try:
            msg = m.decode(frame)
            if isinstance(msg, m.Generate):
                self.generate(ident, msg)
            elif isinstance(msg, m.Shed) and type(msg.rows) is int and type(msg.steps) is int:
                if 0 < msg.rows <= 1 << 20 and 0 <= msg.steps <= self.settings.max_steps:
                    self.core.scheduler.demand.arrive(self.core.clock(), msg.rows, msg.steps or None)
            elif isinstance(msg, m.Cancel) and type(msg.id) is int:
                job = self.jobs.get((ident, msg.id))
                if job is not None:
                    self.core.cancel(job, msg.sent if type(msg.sent) is float and msg.sent > 0 else None)
        except (m.WireError, TypeError, ValueError) as e:
            log.warning("model %s: dropped a frame: %s", self.core.name, e)

    def generate(self, ident: int, g: m.Generate) -> None:
        if type(g.id) is not int:
            raise TypeError("Generate.id must be an int")
        problem = self.check(g)
        if problem:
            self.send(ident, m.Failed(id=g.id, kind="invalid", message=problem))
            return
        sp = None if g.steer is None else steering.from_wire(g.steer)
        rows = g.n * (sp.particles if sp else 1)  # a steered sample is `particles` rows
        try:  # the room is checked before the job (and its noise) is made: a refusal must stay cheap
            job = self.core.admit(
                rows * rows_per_sample(g.guidance),
                lambda: self.job_of(g, sp, rows),
                steps=g.steps or 1,  # "auto" may take one step (and early exit cuts to one)
                deadline=g.deadline,
                margin=g.margin,
                auto=not g.steps,
            )
        except QueueFull as q:
            self.send(ident, m.Failed(id=g.id, kind="queue_full", message=str(q), retry_after=q.retry_after))
            return
        except DeadlineExceeded as d:  # admission.Unmeetable: not even one step fits (504, not retried)
            self.send(ident, m.Failed(id=g.id, kind="deadline", message=str(d)))
            return
        except RewardUnavailable as e:
            self.send(ident, m.Failed(id=g.id, kind=e.kind, message=str(e)))
            return
        self.owner[job.id] = (ident, g.id)
        self.jobs[(ident, g.id)] = job

    def job_of(self, g: m.Generate, sp: SteerParams | None, rows: int) -> Job:
        """The scheduler's Job for a checked request: noise and re-noise keys from its seed, as `flowmap
        sample` (and `--steer`) draws them; labels repeated per particle."""
        steer = None if sp is None else self.steer_of(sp)
        p = rows // g.n
        return Job(
            noise=make_noise(rows, self.model.shape, g.seed, self.core.device),
            labels=[v for v in (g.labels or [0] * g.n) for _ in range(p)],
            steps=g.steps or None,
            guidance=g.guidance,
            deadline=g.deadline,
            on_done=self._done,
            seed=g.seed,
            keys=sample_keys(g.seed, rows).tolist() if g.sampler == "consistency" else None,
            steer=steer,
            margin=g.margin,
            on_preview=self._preview if g.preview else None,
        )

    def check(self, g: m.Generate) -> str | None:
        """The core trusts no one: a bad request must fail alone, never inside a shared batch. The ranges
        are the API's (server.common.ranges); what only the wire has is checked here."""
        st, c, name = self.settings, self.model.num_classes, self.core.name
        number = lambda v: type(v) in (int, float) and math.isfinite(v)
        if type(g.steps) is not int:
            return "steps must be an integer (0: auto)"
        if not number(g.deadline):
            return "deadline must be a finite number"
        if not (number(g.margin) and 0 <= g.margin < 60):
            return "margin must be in 0..60 seconds"
        if type(g.preview) is not bool:
            return "preview must be a boolean"
        return (
            ranges.num_samples(g.n, st)
            or (g.steps != 0 and ranges.steps(g.steps, st))
            or ranges.seed(g.seed)
            or ranges.guidance(g.guidance, st)
            or ranges.guidance_for(g.guidance, c, name)
            or ranges.sampler(g.sampler, self.samplers, name)
            or (g.steer is not None and self.check_steer(g))
            or (g.labels is not None and ranges.labels(g.labels, g.n, c, name))
            or None
        )

    def check_steer(self, g: m.Generate) -> str | None:
        try:
            sp = steering.from_wire(g.steer)
            steering.check(sp, g.n, list(self.model.shape), self.samplers, self.settings)
        except (steering.SteerError, TypeError) as e:
            return f"{getattr(e, 'field', 'steer')}: {e}"
        if g.sampler != "consistency":
            return "steer: steered requests use the consistency sampler"
        return None

    def steer_of(self, sp: SteerParams) -> Steer:
        """The scheduler's Steer for a checked steer option; rewards are built once per spec (the classifier
        loads once) on the engine's device. RewardUnavailable fails this request only."""
        reward = self.rewards.get(sp.reward)
        if reward is None:
            try:
                reward = make_reward(sp.reward, list(self.model.shape), device=self.core.device)
            except ValueError as e:  # a reward the library refuses (RewardError)
                raise RewardUnavailable("invalid", f"steer.reward: {e}") from None
            except Exception as e:  # a listed user reward that fails to import, a missing classifier
                log.exception("model %s: reward %s could not be built", self.core.name, sp.reward)
                raise RewardUnavailable(
                    "failed", f"steer.reward could not be built: {type(e).__name__}"
                ) from None
            self.rewards[sp.reward] = reward
        return Steer(
            particles=sp.particles,
            reward=reward,
            scale=float(sp.scale),
            select=sp.method,
            name=steering.reward_label(sp.reward),
        )

    def _preview(self, job: Job, step: int, x0) -> None:
        """A streamed request's samples made `step`: their jump to data goes out at once."""
        key = self.owner.get(job.id)
        if key is not None:
            self.send(key[0], m.Preview(id=key[1], step=step, steps=job.steps, data=float32_bytes(x0)))

    def _done(self, job: Job) -> None:
        key = self.owner.pop(job.id, None)
        if key is None:  # warm-up jobs
            return
        self.jobs.pop(key, None)
        ident, rid = key
        err = job.error
        if err is None:
            q, c = job.first_admit - job.arrival, job.finished - job.first_admit
            data = float32_bytes(job.result)
            out = m.Done(id=rid, steps=job.steps_taken, data=data, queue_s=q, compute_s=c)
        elif isinstance(err, DeadlineExceeded):
            out = m.Failed(id=rid, kind="deadline", message="deadline passed")
        elif isinstance(err, Cancelled):
            out = m.Failed(id=rid, kind="cancelled", message="cancelled")
        else:
            out = m.Failed(id=rid, kind="failed", message=f"network call failed: {type(err).__name__}")
        self.send(ident, out)  # at once: the rest of the iteration's bookkeeping runs after it left

    def dropped(self, ident: int) -> None:
        """API connection `ident` closed (that process stopped or reconnected; it failed the requests it
        held there): nothing more is sent to it, and its requests are cancelled at the next receive(),
        between steps. The close can be found while a result is sent, inside the scheduler's update of a
        step: ending jobs there would pull them from under it."""
        self.closed.add(ident)

    def cancel_closed(self) -> None:
        """Cancel the requests of the connections closed since the last call, so they stop taking rows."""
        if not self.closed:  # the common case, on every loop turn: no walk over the jobs
            return
        closed, self.closed = self.closed, set()
        for key in [k for k in self.jobs if k[0] in closed]:
            job = self.jobs.pop(key)
            self.owner.pop(job.id, None)
            self.core.cancel(job)

    def receive(self) -> None:
        """The closed connections' cancels, then the messages waiting now, without blocking: at most
        RECEIVE_MAX before the next iteration, so a flood of requests cannot starve the ones running."""
        self.cancel_closed()
        inbox, taken = self.link.inbox, 0
        while inbox and taken < RECEIVE_MAX:  # a connection closed by a send here leaves the inbox shorter
            self.handle(*inbox.popleft())
            taken += 1

    def send(self, ident: int, msg) -> None:
        if ident in self.closed:  # its process failed the request itself; cancelled at the next receive()
            return
        if isinstance(msg, m.Done | m.Failed):  # what the API processes shed by before asking (service.py)
            msg.wait_s, msg.sent = self.core.wait_seconds(), time.monotonic()
        frame = m.encode(msg)
        if len(frame) > MAX_FRAME:  # the API refuses requests this large (Service.validate): never here
            log.error("model %s: a %d-byte output is past the link's bound", self.core.name, len(frame))
            if not isinstance(msg, m.Done):
                return
            frame = m.encode(m.Failed(id=msg.id, kind="failed", message="result too large for the link"))
        if self.link is None:
            self.outbox.append((ident, frame))
            return
        if not self.link.send(ident, frame):  # that API process is gone (it failed the request itself)
            log.warning("model %s: an output could not be delivered", self.core.name)

    def run(self, parent: int) -> None:
        timeout, checked = 0.0, time.monotonic()
        emitted = checked
        while True:
            self.link.poll(timeout)
            self.receive()
            wait = self.core.step(emit=False)  # finished requests are sent as they finish
            now = time.monotonic()
            if wait != 0.0 or now - emitted > EMIT_EVERY_S:  # metrics between requests' steps, not
                self.core.emit()  # on every step boundary of a running one (they cost ~0.05 ms each)
                emitted = now
            timeout = IDLE_POLL_S if wait is None else wait
            if now - checked > PARENT_CHECK_S:
                checked = time.monotonic()
                if os.getppid() != parent:
                    log.warning("model %s: supervisor gone; exiting", self.core.name)
                    return


def float32_bytes(x: torch.Tensor) -> bytes:
    """x's values as C-order float32 bytes (no conversion for a float32 CPU tensor, the usual result)."""
    if x.dtype != torch.float32 or x.device.type != "cpu":
        x = x.float().cpu()
    return x.detach().contiguous().numpy().tobytes()


def serve(index: int, spec: str, run_dir: str, settings: ServerSettings, parent: int) -> int:
    ctx = zmq.Context()
    control = ctx.socket(zmq.PUSH)
    control.setsockopt(zmq.LINGER, 2000)
    control.connect(f"ipc://{run_dir}/control")
    if os.getppid() != parent:  # the supervisor died while this process was importing torch
        return 1
    try:
        from server.common.metrics import Metrics

        metrics = Metrics()
        torch.set_num_threads(settings.threads)
        core, model, served = build_core(spec, settings, metrics.iteration, run_dir)
        metrics.build_info(__version__, served.engine, ops.BACKEND)
        warm_up(core, model, settings)
        served = dataclasses.replace(served, precision=precision_of(core.executor.engine))  # auto: chosen now
        metrics.batch_rows(model.name, core.scheduler.max_batch)
        link = Listener(core_path(run_dir, index))
    except Exception as e:  # every reason a core cannot serve reaches the supervisor, and the user
        user = isinstance(e, UserError | ValueError)
        msg = str(e) if user else f"{type(e).__name__}: {e}"
        log.error("model %s: %s", spec, msg, exc_info=not user)
        control.send(m.encode(m.Fatal(index=index, message=msg, code=2 if user else 1)))
        control.close()
        return 2 if user else 1
    freeze_startup_heap()
    control.send(m.encode(m.Ready(index=index, pid=os.getpid(), info=served)))
    log.info("model %s ready (%s on %s)", served.name, served.engine, served.device)
    server = CoreServer(core, model, settings, link)
    link.on_close = server.dropped
    server.run(parent)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m server.core_process")
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--settings", required=True, help="ServerSettings as JSON")
    p.add_argument("--parent", type=int, required=True, help="the supervisor's pid (exit when it is gone)")
    a = p.parse_args(argv)
    settings = ServerSettings.model_validate(json.loads(a.settings))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(settings.log_level.upper())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when a core stops
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with torch.inference_mode():
        return serve(a.index, a.model, a.dir, settings, a.parent)
