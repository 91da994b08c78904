"""The serving API behind both protocols: one `generate` call, the models the engine cores report, and
the lifecycle of this API process (starting -> ready -> draining). No torch, no HTTP.

v1 (JSON) and v2 (Open Inference Protocol) routes are thin codecs: they decode into GenParams, call
`Service.generate`, and format the result or the ServiceError raised here. The network runs in the
engine-core processes (server.core_process); this side validates, sends one Generate message, awaits
its Done / Failed (or the deadline, or the client's disconnect) and encodes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from flowmap.labels import cycled
from server.api_process.client import CoreClient, CoreDown
from server.api_process.encode import IMAGE_FORMATS
from server.common import messages as m
from server.common import ranges
from server.common import steer as steering
from server.common.estimator import ReturnPath
from server.common.frames import MAX_RESULT
from server.common.settings import ServerSettings
from server.common.spec import ModelSpec
from server.common.stats import Rejection, RequestStats, SteerStats
from server.common.steer import SteerParams

log = logging.getLogger("flowmap.server")
LOST_HOLD = 1.0  # seconds a core whose connection closed stays down unless the supervisor says otherwise


class ServiceError(Exception):
    """An outcome other than success: `status` is the HTTP status sent, `reason` the metric label."""

    status = 500
    reason = "failed"
    model: str | None = None  # the model the request named (set by server.api_process.http.generate)

    def __init__(self, message: str, field: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.field, self.retry_after = field, retry_after


class InvalidInput(ServiceError):
    status, reason = 422, "invalid"


class Unauthorized(ServiceError):
    status, reason = 401, "unauthorized"


class UnknownModel(ServiceError):
    status, reason = 404, "not_found"


class Unavailable(ServiceError):
    status, reason = 503, "not_ready"


class Draining(Unavailable):
    reason = "draining"


class CoreUnavailable(Unavailable):
    reason = "unavailable"


class Overloaded(ServiceError):
    status, reason = 429, "queue_full"


class TimedOut(ServiceError):
    status, reason = 504, "deadline"


class ClientGone(ServiceError):
    status, reason = 499, "cancelled"


@dataclass
class GenParams:
    """One decoded generation request (labels: a class, a list of classes, or None)."""

    model: str | None = None
    steps: int | None = None  # None: "auto"
    num_samples: int = 1
    seed: int | None = None
    class_label: int | list[int] | None = None
    guidance_scale: float | None = None
    deadline_ms: float | None = None
    output: str = "png"  # png | webp | jpeg | npy | tensor (raw array for v2)
    quality: int | None = None  # webp, jpeg: 1..100
    sampler: str | None = None  # flowmap | consistency; None: the model's default
    steer: SteerParams | None = None  # reward steering over particles (server.common.steer)
    stream: bool = False  # the route streams previews (server.api_process.stream)


@dataclass
class Preview:
    """A streamed request's jump to data X_{s,0} after step `step` of `steps`."""

    step: int
    steps: int
    x: np.ndarray  # [N, *shape] float32 model space
    image: bool  # the model's samples are images


@dataclass
class GenResult:
    model: str
    steps: int
    seed: int
    labels: list[int] | None
    guidance: float
    x: np.ndarray  # [N, *shape] float32 model space
    timings: dict = field(default_factory=dict)
    sampler: str = "flowmap"
    calls_per_sample: int = 0  # network rows evaluated per returned sample
    steered: bool = False
    sent: float | None = None  # time.monotonic() when the engine core sent it


@dataclass
class ModelEntry:
    """A served model: its engine core's spec, the client of that core, and the way back from it."""

    index: int
    spec: ModelSpec
    client: CoreClient
    way_back: ReturnPath = field(default_factory=ReturnPath)  # core -> this process, for "auto"
    outstanding: int = 0  # requests sent to the core and not answered yet


class Service:
    """This API process's view of the engine cores, and `generate`."""

    def __init__(self, settings: ServerSettings, clients: list[CoreClient], metrics=None):
        self.settings, self.clients, self.metrics = settings, clients, metrics
        self.entries: dict[str, ModelEntry] = {}
        self.generations: list[int] = [-1] * len(clients)
        self.up: list[bool] = [False] * len(clients)  # per core, from the supervisor
        self.lost: dict[int, tuple[int, float]] = {}  # core -> (generation, when) its connection closed
        for i, c in enumerate(clients):
            c.on_lost = functools.partial(self.core_lost, i)
        self.failed: dict[str, str] = {}  # --model spec -> why it could not be loaded (not served)
        self.draining = False
        self.inflight = 0
        self.idle = asyncio.Event()

    # ------------------------------------------------------------ lifecycle
    @property
    def state(self) -> str:
        if self.draining:
            return "draining"
        return "ready" if self.cores_up else ("starting" if not self.entries else "unavailable")

    @property
    def cores_up(self) -> bool:
        return all(up or self.settings.models[i] in self.failed for i, up in enumerate(self.up))

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def default_model(self) -> str | None:
        return next(iter(self.entries), None)

    def on_states(self, states: m.CoreStates) -> None:
        """The supervisor's CoreStates: models appear when their core is ready; a core that stopped
        (down, or restarted since) fails the requests it held."""
        for i, core in enumerate(states.cores[: len(self.clients)]):
            up = bool(core.up) and not self.held_down(i, core.generation)
            if self.up[i] and (not up or core.generation != self.generations[i]):
                # drop what is queued for the dead core too, so its replacement does not compute it
                self.clients[i].reconnect("the engine core stopped with this request in it")
            self.generations[i], self.up[i] = core.generation, up
            if core.failed:
                self.failed[self.settings.models[i]] = core.failed
            if core.info is not None and core.info.name not in self.entries:
                self.entries[core.info.name] = ModelEntry(index=i, spec=core.info, client=self.clients[i])
                # in the order of --model (the first is the default), whichever core was ready first
                self.entries = dict(sorted(self.entries.items(), key=lambda kv: kv[1].index))

    def core_lost(self, i: int) -> None:
        """Core i closed its connection: down (503, not ready) from now, not from when the supervisor
        notices the exit and says so (up to a tick later)."""
        self.up[i] = False
        self.lost[i] = (self.generations[i], time.monotonic())

    def held_down(self, i: int, generation: int) -> bool:
        """Whether core i's `generation` is the one whose connection closed: until the supervisor reports
        another, or LOST_HOLD seconds (a core still alive after that only dropped the connection, which
        the next send opens again)."""
        lost = self.lost.get(i)
        if lost is not None and lost[0] == generation and time.monotonic() - lost[1] < LOST_HOLD:
            return True
        self.lost.pop(i, None)
        return False

    def begin_drain(self) -> None:
        self.draining = True
        if self.inflight == 0:
            self.idle.set()

    async def drained(self, timeout: float) -> bool:
        """Wait until no accepted request is left (True) or the timeout passes (False)."""
        if self.inflight == 0:
            return True
        try:
            await asyncio.wait_for(self.idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def fail_pending(self, reason: str) -> None:
        """Answer every request still waiting on a core (503): the drain timed out."""
        for c in self.clients:
            c.fail_all(reason)

    def check_open(self, e: ModelEntry | None = None) -> None:
        if self.draining:
            raise Draining("server is draining")
        if not self.entries:
            raise Unavailable("server is warming up")
        if e is not None and not self.up[e.index]:
            raise CoreUnavailable(f"the engine core of model {e.spec.name!r} is restarting", retry_after=1)

    # ------------------------------------------------------------ stats (labels: server-known values only)
    def known_model(self, name: str | None) -> str:
        return name if name in self.entries else ""

    def reject(self, reason: str, model: str | None = None) -> None:
        if self.metrics is not None:
            self.metrics.reject(Rejection(reason=reason, model=self.known_model(model)))

    def record(self, model: str | None, steps, status: int, seconds: float, queue: float | None) -> None:
        if self.metrics is None:
            return
        ok_steps = steps if isinstance(steps, int) and 1 <= steps <= self.settings.max_steps else None
        stats = RequestStats(
            model=self.known_model(model), steps=ok_steps, status=status, seconds=seconds, queue_seconds=queue
        )
        self.metrics.request(stats)

    # ------------------------------------------------------------ generation
    def entry(self, name: str | None) -> ModelEntry:
        if not self.entries:  # still starting: nothing is known to be missing yet
            raise Unavailable("server is warming up")
        name = name or self.default_model or ""
        if name not in self.entries:
            shown = name if len(name) <= 64 else name[:64] + "..."
            raise UnknownModel(f"unknown model {shown!r}; serving: {', '.join(self.entries)}", "model")
        return self.entries[name]

    async def generate(
        self,
        p: GenParams,
        disconnected: Callable[[], Awaitable] | None = None,
        on_preview: Callable[[Preview], None] | None = None,
    ) -> GenResult:
        """Validate against the model, send to its core, wait (deadline, disconnect). Raises ServiceError.
        `on_preview`: the core sends every step's jump to data, handed over as it comes. Cancelling the
        call cancels the request in the core too."""
        self.check_open()
        e = self.entry(p.model)
        self.check_open(e)
        self.validate(e, p)
        self.inflight += 1
        self.idle.clear()
        try:
            return await self._generate(e, p, disconnected, on_preview)
        finally:
            self.inflight -= 1
            if self.inflight == 0 and self.draining:
                self.idle.set()

    async def _generate(self, e: ModelEntry, p: GenParams, disconnected, on_preview) -> GenResult:
        t0 = time.monotonic()
        deadline_ms = p.deadline_ms if p.deadline_ms is not None else self.settings.request_timeout_ms
        g = m.Generate(
            id=0,  # the client numbers it
            n=p.num_samples,
            seed=p.seed if p.seed is not None else secrets.randbelow(ranges.SEED_MAX),
            steps=p.steps or 0,
            labels=self.labels(e, p),
            guidance=self.guidance(e, p),
            deadline=t0 + deadline_ms / 1000,
            sampler="consistency" if p.steer else (p.sampler or e.spec.default_sampler),
            steer=p.steer.wire() if p.steer else None,
            margin=e.way_back.margin(deadline_ms / 1000) if p.steps is None else 0.0,
            preview=on_preview is not None,
        )
        try:
            if e.outstanding >= self.settings.max_queue + self.settings.max_batch_size:
                # more outstanding than the core could hold: refuse here, so a flood never reaches the core
                raise Overloaded("queue full", retry_after=1)
            self.shed(e, t0, deadline_ms / 1000 - g.margin)
        except Overloaded:  # the core still counts it as an arrival ("auto" steps follow the demand)
            per_sample = steering.calls_per_sample(1, p.steer.particles if p.steer else 1, g.guidance)
            e.client.notify(m.Shed(rows=g.n * per_sample, steps=g.steps))
            raise
        shape, image, got = (p.num_samples, *e.spec.shape), e.spec.image, None
        if on_preview is not None:
            x = lambda v: np.frombuffer(v.data, np.float32).reshape(shape)
            got = lambda v: on_preview(Preview(v.step, v.steps, x(v), image))
        try:
            rid, fut = e.client.submit(functools.partial(_numbered, g), got)
        except CoreDown as err:
            raise CoreUnavailable(str(err), retry_after=1) from None
        e.outstanding += 1
        try:
            out = await self._wait(e, rid, fut, g.deadline, disconnected)
        finally:
            e.outstanding -= 1
        if isinstance(out, m.Failed):
            raise _failure(out)
        return self._result(e, p, g, out)

    def shed(self, e: ModelEntry, now: float, budget: float) -> None:
        """429 at once when the core's last reported queue wait, aged to `now`, is already past the
        server's bound or the request's `budget` (seconds): the core would refuse it (admission.py)."""
        wait, bound = e.client.reported.now(now), self.settings.max_queue_ms / 1000
        if wait > min(bound, budget):
            what = "the server's bound" if wait > bound else "the request's deadline"
            msg = f"overloaded: predicted queue wait {1e3 * wait:.0f} ms is past {what}"
            raise Overloaded(msg, retry_after=max(1.0, math.ceil(wait - min(bound, budget))))

    def _result(self, e: ModelEntry, p: GenParams, g: m.Generate, out: m.Done) -> GenResult:
        calls = steering.calls_per_sample(out.steps, p.steer.particles if p.steer else 1, g.guidance)
        if p.steer and self.metrics is not None:
            reward = steering.reward_label(p.steer.reward)
            self.metrics.steer(
                SteerStats(model=e.spec.name, reward=reward, evaluations=calls * p.num_samples)
            )
        return GenResult(
            model=e.spec.name,
            steps=out.steps,
            seed=g.seed,
            labels=g.labels,
            guidance=g.guidance,
            x=np.frombuffer(out.data, np.float32).reshape(p.num_samples, *e.spec.shape),
            timings={"queue_ms": 1e3 * out.queue_s, "compute_ms": 1e3 * out.compute_s},
            sampler=g.sampler,
            calls_per_sample=calls,
            steered=bool(p.steer),
            sent=out.sent,
        )

    def returned(self, r: GenResult) -> None:
        """A result is encoded and about to be written: learn its way back from the core, which "auto"
        steps then reserve out of later deadlines (ModelEntry.way_back)."""
        e = self.entries.get(r.model)
        if e is not None and r.sent is not None:
            e.way_back.observe(time.monotonic() - r.sent)

    async def _wait(self, e: ModelEntry, rid: int, fut: asyncio.Future, deadline: float, disconnected):
        """The core's answer; TimedOut past the deadline (the core expires it first), ClientGone when
        `disconnected()` returns first. Either ends the wait by cancelling `fut` (the core is told), so the
        request's task wakes once, for whichever came first (no asyncio.wait per request). A result that
        arrives in the same loop turn as the timer, after it, is dropped: that is 50 ms past the deadline."""
        loop = asyncio.get_running_loop()
        ended: list[ServiceError] = []

        def end(error: ServiceError) -> None:
            if not fut.done():
                ended.append(error)
                fut.cancel()

        def gone(w: asyncio.Future) -> None:
            if not w.cancelled():
                w.exception()  # retrieved: a failing watch also means the client is gone
                end(ClientGone("client disconnected"))

        timeout = max(0.0, deadline - time.monotonic()) + 0.05
        timer = loop.call_later(timeout, end, TimedOut("deadline passed"))
        watch = asyncio.ensure_future(disconnected()) if disconnected else None
        if watch is not None:
            watch.add_done_callback(gone)
        try:
            return await fut
        except asyncio.CancelledError:  # ended above, or the caller gave up (a stream whose client left)
            e.client.cancel(rid)
            cancelling = getattr(asyncio.current_task(), "cancelling", None)  # Python 3.11+
            if ended and not (cancelling and cancelling()):  # a cancel of the caller's own task wins
                raise ended[0] from None
            raise
        except Exception as err:  # the core went away with it (CoreDown)
            raise CoreUnavailable(str(err), retry_after=1) from None
        finally:
            timer.cancel()
            if watch is not None:
                watch.remove_done_callback(gone)
                watch.cancel()

    def labels(self, e: ModelEntry, p: GenParams) -> list[int] | None:
        """Per-sample classes; omitted on a conditional model: cycle 0..C-1 (as `flowmap sample`)."""
        c, n = e.spec.num_classes, p.num_samples
        if p.class_label is None:
            return cycled(n, c) if c else None
        labels = p.class_label if isinstance(p.class_label, list) else [p.class_label] * n
        _refuse(ranges.labels(labels, n, c, e.spec.name), "class_label")
        return labels

    def guidance(self, e: ModelEntry, p: GenParams) -> float:
        w = 1.0 if p.guidance_scale is None else float(p.guidance_scale)
        _refuse(ranges.guidance_for(w, e.spec.num_classes, e.spec.name), "guidance_scale")
        return w

    def validate(self, e: ModelEntry, p: GenParams) -> None:
        """Limits that depend on the settings or the model (server.common.ranges, which the core checks
        again; v1's schema repeats the static ones)."""
        st = self.settings
        _refuse(p.steps is not None and ranges.steps(p.steps, st), "steps")
        _refuse(ranges.num_samples(p.num_samples, st), "num_samples")
        per = 4 * math.prod(e.spec.shape)  # bytes of one float32 sample, as the core returns it
        if p.num_samples * per > MAX_RESULT:
            size = f"{p.num_samples * per >> 20} MiB"
            msg = f"{p.num_samples} samples of shape {e.spec.shape} are {size}; at most {MAX_RESULT // per}"
            raise InvalidInput(msg, "num_samples")
        _refuse(p.seed is not None and ranges.seed(p.seed), "seed")
        _refuse(p.guidance_scale is not None and ranges.guidance(p.guidance_scale, st), "guidance_scale")
        if p.deadline_ms is not None and not 1 <= p.deadline_ms <= st.request_timeout_ms:
            raise InvalidInput(f"deadline_ms must be in 1..{st.request_timeout_ms:g}", "deadline_ms")
        served = e.spec.samplers
        if p.steer is not None:
            self.validate_steer(e, p, served)
        _refuse(p.sampler is not None and ranges.sampler(p.sampler, served, e.spec.name), "sampler")
        if p.output in IMAGE_FORMATS and not e.spec.image:
            raise InvalidInput(f"model {e.spec.name!r} is not an image model; use output='npy'", "output")

    def validate_steer(self, e: ModelEntry, p: GenParams, served: list[str]) -> None:
        if p.sampler not in (None, "consistency"):
            msg = "steer runs the consistency sampler (jump to data, re-noise); omit sampler"
            raise InvalidInput(msg, "sampler")
        try:
            steering.check(p.steer, p.num_samples, e.spec.shape, served, self.settings)
        except steering.SteerError as err:
            raise InvalidInput(f"{err.field}: {err}", err.field) from None


def _refuse(problem: str | None | bool, field: str) -> None:
    """InvalidInput naming `field` when a check found a problem."""
    if problem:
        raise InvalidInput(problem, field)


def _failure(f: m.Failed) -> ServiceError:
    kinds = {
        "queue_full": Overloaded,
        "deadline": TimedOut,
        "cancelled": ClientGone,
        "invalid": InvalidInput,
    }
    return kinds.get(f.kind, ServiceError)(f.message, retry_after=f.retry_after)


def _numbered(g: m.Generate, rid: int) -> m.Generate:
    """`g` with the id its core client gave it (set in place: nothing else reads a Generate's id, and a
    copy costs 5 us a request)."""
    g.id = rid
    return g
