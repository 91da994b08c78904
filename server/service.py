"""The serving core behind the routes: loaded models with their workers, lifecycle, and one `generate`.

Routes (v1 JSON and v2 tensors) translate to `GenParams` and map the `ServiceError`s raised here to
HTTP statuses; nothing here knows HTTP. Completion crosses from the worker thread to the event loop
through `loop.call_soon_threadsafe`; encoding runs in a small thread pool, off the event loop.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import Tensor

from flowmap.checkpoint import Model, load_model
from flowmap.samplers import make_noise
from server.encode import is_image, npy_base64, png_images
from server.estimator import CallTimer
from server.scheduler import Cancelled, DeadlineExceeded, Job, QueueFull, Scheduler
from server.settings import ServerSettings
from server.stats import IterationStats, Rejection, RequestStats
from server.worker import Executor, ModelWorker

log = logging.getLogger("flowmap.server")
SEED_MAX = 2**63 - 1


class ServiceError(Exception):
    """An outcome other than success; `status` is the HTTP status the routes send."""

    status = 500
    reason = "failed"

    def __init__(self, message: str, field: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.field, self.retry_after = field, retry_after


class InvalidInput(ServiceError):
    status, reason = 422, "invalid"


class UnknownModel(ServiceError):
    status, reason = 404, "not_found"


class Unavailable(ServiceError):
    status, reason = 503, "not_ready"


class Overloaded(ServiceError):
    status, reason = 429, "queue_full"


class TimedOut(ServiceError):
    status, reason = 504, "deadline"


class ClientGone(ServiceError):
    status, reason = 499, "cancelled"


@dataclass
class GenParams:
    """One validated generation request (labels: a class, a list of classes, or None)."""

    model: str | None = None
    steps: int | None = None  # None: "auto"
    num_samples: int = 1
    seed: int | None = None
    class_label: int | list[int] | None = None
    guidance_scale: float | None = None
    deadline_ms: float | None = None
    output: str = "png"  # png | npy | tensor (raw tensor for v2)


@dataclass
class GenResult:
    model: str
    steps: int
    seed: int
    labels: list[int] | None
    guidance: float
    x: Tensor  # [N, *shape] float32 model space
    images: list[str] | None = None
    array: str | None = None
    timings: dict = field(default_factory=dict)


@dataclass
class ModelEntry:
    name: str
    model: Model
    worker: ModelWorker
    engine_name: str

    @property
    def conditional(self) -> bool:
        return self.model.num_classes > 0

    @property
    def image(self) -> bool:
        return is_image(self.model.shape)

    @property
    def baked_guidance(self) -> float:
        return float((self.model.config.get("guidance") or {}).get("baked_scale", 1.0))


def pick_engine(settings: ServerSettings, device: str) -> str:
    if settings.engine:
        return settings.engine
    import engines

    default = getattr(engines, "default_engine", None)
    return default(device) if default else "eager"


def resolve_device(device: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def buckets_for(max_batch: int) -> tuple[int, ...]:
    return tuple(sorted({b for b in (1, 8, 32, 128, 512) if b < max_batch} | {max_batch}))


def build_entry(name_or_path: str, settings: ServerSettings, on_iteration: Callable) -> ModelEntry:
    """Load a model and its engine and wrap them in a (not yet started) worker."""
    from engines import load_engine

    model = load_model(name_or_path)
    device = resolve_device(settings.device)
    engine_name = pick_engine(settings, device)
    engine = load_engine(engine_name, model, device=device, buckets=buckets_for(settings.max_batch_size))
    sched = Scheduler(
        settings.max_batch_size,
        settings.max_queue,
        settings.max_wait_ms / 1000,
        settings.max_steps,
        CallTimer(),
        settings.batching,
    )
    executor = Executor(engine, model.num_classes, model.num_classes > 0, device)
    worker = ModelWorker(model.name, sched, executor, on_iteration)
    worker.engine = engine
    return ModelEntry(model.name, model, worker, engine_name)


class Service:
    """Models, their workers and the lifecycle: starting -> ready -> draining."""

    def __init__(self, settings: ServerSettings, entries: dict[str, ModelEntry], metrics=None):
        self.settings, self.entries, self.metrics = settings, entries, metrics
        self.state = "starting"
        self.inflight = 0
        self.idle = asyncio.Event()
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="flowmap-encode")
        self.default_model = next(iter(entries))

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        for e in self.entries.values():
            e.worker.start()

    def warmup(self) -> None:
        """Engine warm-up, then real batches through each worker to seed the call-time estimate."""
        for e in self.entries.values():
            e.worker.engine.warmup()
            for n in buckets_for(self.settings.max_batch_size)[-3:]:
                done = threading.Event()
                job = Job(make_noise(n, e.model.shape, 0), [0] * n, 1, on_done=lambda j, d=done: d.set())
                e.worker.submit(job)
                done.wait(120)
        # Move everything alive now (torch, FastAPI, pydantic, the models: ~10^6 objects) out of the
        # collector's reach: otherwise each full collection walks them all, and under load those
        # pauses reached 200+ ms with every request stalled behind them (p99 5x p50).
        gc.collect()
        gc.freeze()
        self.state = "ready"
        log.info("ready: %s", ", ".join(f"{e.name} ({e.engine_name})" for e in self.entries.values()))

    def begin_drain(self) -> None:
        self.state = "draining"
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

    def stop(self) -> None:
        for e in self.entries.values():
            e.worker.stop()
        self.pool.shutdown(wait=False)

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    # ------------------------------------------------------------ stats
    def on_iteration(self, s: IterationStats) -> None:
        if self.metrics is not None:
            self.metrics.iteration(s)

    def reject(self, reason: str, model: str = "") -> None:
        if self.metrics is not None:
            self.metrics.reject(Rejection(reason, model))

    def record(self, model: str, steps: int | None, status: int, seconds: float, queue: float | None) -> None:
        if self.metrics is not None:
            self.metrics.request(RequestStats(model, steps, status, seconds, queue))

    # ------------------------------------------------------------ generation
    def entry(self, name: str | None) -> ModelEntry:
        name = name or self.default_model
        if name not in self.entries:
            raise UnknownModel(f"unknown model {name!r}; serving: {', '.join(self.entries)}", "model")
        return self.entries[name]

    def check_open(self) -> None:
        if self.state != "ready":
            reason = "draining" if self.state == "draining" else "not_ready"
            err = Unavailable("server is draining" if reason == "draining" else "server is warming up")
            err.reason = reason
            raise err

    async def generate(self, p: GenParams, disconnected: Callable[[], Awaitable] | None = None) -> GenResult:
        """Validate against the model, queue, wait (deadline, disconnect), encode. Raises ServiceError."""
        self.check_open()
        e = self.entry(p.model)
        self.validate(e, p)
        self.inflight += 1
        self.idle.clear()
        try:
            return await self._generate(e, p, disconnected)
        finally:
            self.inflight -= 1
            if self.inflight == 0 and self.state == "draining":
                self.idle.set()

    async def _generate(self, e: ModelEntry, p: GenParams, disconnected) -> GenResult:
        t0 = time.monotonic()
        job = self.make_job(e, p, t0)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        job.on_done = lambda j: loop.call_soon_threadsafe(_settle, fut)
        try:
            e.worker.submit(job)
        except QueueFull as q:
            raise Overloaded(str(q), retry_after=q.retry_after) from None
        await self._wait(e, job, fut, disconnected)
        if job.error is not None:
            raise _map_error(job.error)
        result = GenResult(e.name, job.steps, job.seed, job.request_labels, job.guidance, job.result)
        if p.output in ("png", "npy"):
            await loop.run_in_executor(self.pool, _encode, result, p.output)
        t1 = time.monotonic()
        result.timings = {
            "queue_ms": 1e3 * (job.first_admit - job.arrival),
            "compute_ms": 1e3 * (job.finished - job.first_admit),
            "total_ms": 1e3 * (t1 - t0),
        }
        return result

    async def _wait(self, e: ModelEntry, job: Job, fut: asyncio.Future, disconnected) -> None:
        timeout = max(0.0, job.deadline - time.monotonic()) + 0.05  # the scheduler expires it first
        watch = asyncio.ensure_future(disconnected()) if disconnected else None
        try:
            done, _ = await asyncio.wait(
                {fut} | ({watch} if watch else set()), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if watch is not None:
                watch.cancel()
        if fut in done:
            return
        e.worker.cancel(job)
        if watch is not None and watch in done:
            raise ClientGone("client disconnected")
        raise TimedOut("deadline passed")

    def make_job(self, e: ModelEntry, p: GenParams, now: float) -> Job:
        labels = self.labels(e, p)
        guidance = self.guidance(e, p)
        seed = p.seed if p.seed is not None else secrets.randbelow(SEED_MAX)
        deadline_ms = p.deadline_ms if p.deadline_ms is not None else self.settings.request_timeout_ms
        device = e.worker.executor.device
        noise = make_noise(p.num_samples, e.model.shape, seed, device)  # [N, *shape], as `flowmap sample`
        engine_labels = labels if labels is not None else [0] * p.num_samples
        return Job(
            noise,
            engine_labels,
            p.steps,
            guidance,
            now + deadline_ms / 1000,
            seed=seed,
            request_labels=labels,
        )

    def labels(self, e: ModelEntry, p: GenParams) -> list[int] | None:
        """Per-sample classes; omitted on a conditional model: cycle 0..C-1 (as `flowmap sample`)."""
        c, n = e.model.num_classes, p.num_samples
        if c == 0:
            if p.class_label is not None:
                raise InvalidInput(f"model {e.name!r} is unconditional; omit class_label", "class_label")
            return None
        if p.class_label is None:
            return [i % c for i in range(n)]
        labels = p.class_label if isinstance(p.class_label, list) else [p.class_label] * n
        if len(labels) != n:
            msg = f"class_label list has {len(labels)} entries for num_samples={n}"
            raise InvalidInput(msg, "class_label")
        bad = [v for v in labels if not 0 <= v < c]
        if bad:
            raise InvalidInput(
                f"class_label {bad[0]} out of range: model {e.name!r} has classes 0..{c - 1}", "class_label"
            )
        return labels

    def guidance(self, e: ModelEntry, p: GenParams) -> float:
        w = 1.0 if p.guidance_scale is None else float(p.guidance_scale)
        if w != 1.0 and not e.conditional:
            msg = f"model {e.name!r} is unconditional; guidance_scale must be 1"
            raise InvalidInput(msg, "guidance_scale")
        return w

    def validate(self, e: ModelEntry, p: GenParams) -> None:
        """Limits that depend on the settings or the model (v1's schema repeats the static ones)."""
        st = self.settings
        if p.steps is not None and not 1 <= p.steps <= st.max_steps:
            raise InvalidInput(f"steps must be in 1..{st.max_steps} or 'auto', got {p.steps}", "steps")
        if not 1 <= p.num_samples <= st.max_samples:
            msg = f"num_samples must be in 1..{st.max_samples}, got {p.num_samples}"
            raise InvalidInput(msg, "num_samples")
        if p.seed is not None and not 0 <= p.seed <= SEED_MAX:
            raise InvalidInput(f"seed must be in 0..{SEED_MAX}, got {p.seed}", "seed")
        w = p.guidance_scale
        if w is not None and not (math.isfinite(w) and abs(w) <= st.max_guidance):
            msg = f"guidance_scale must be finite with |w| <= {st.max_guidance}"
            raise InvalidInput(msg, "guidance_scale")
        if p.deadline_ms is not None and not 1 <= p.deadline_ms <= st.request_timeout_ms:
            raise InvalidInput(f"deadline_ms must be in 1..{st.request_timeout_ms:g}", "deadline_ms")
        if p.output == "png" and not e.image:
            raise InvalidInput(f"model {e.name!r} is not an image model; use output='npy'", "output")


def _settle(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def _map_error(err: Exception) -> ServiceError:
    if isinstance(err, DeadlineExceeded):
        return TimedOut("deadline passed")
    if isinstance(err, Cancelled):
        return ClientGone("cancelled")
    return ServiceError(f"network call failed: {type(err).__name__}")


def _encode(result: GenResult, output: str) -> None:
    if output == "png":
        result.images = png_images(result.x)
    else:
        result.array = npy_base64(result.x)
