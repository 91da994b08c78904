"""Loading one model for serving: its engine (ONNX exported in a short-lived child process), scheduler and
executor, the ModelSpec the API processes read, and the warm-up that must pass before the core reports
Ready."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import torch

from engines.base import PRECISION_NAMES, VARIANTS, EngineError, sync
from engines.by_rows import ByRows
from flowmap.checkpoint import Model, load_model
from flowmap.labels import class_names
from flowmap.losses import CONSISTENCY_METHODS
from flowmap.samplers import make_noise
from server.common.estimator import CallTimer
from server.common.settings import ServerSettings
from server.common.spec import SAMPLERS, ModelSpec, is_image
from server.core_process import admission
from server.core_process.engine_core import EngineCore, Executor
from server.core_process.scheduler import Job, Scheduler

log = logging.getLogger("flowmap.server")


BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def buckets_for(max_batch: int) -> tuple[int, ...]:
    """The batch sizes the engine is built, warmed and timed for; a call is padded up to the next one.
    2 and 4 are there for light load: padded to 8, two mnist rows cost 3.5x their own time (31.8 ms against
    9.1 on ONNX Runtime here), and two or three requests in flight are the common case of a quiet server."""
    return tuple(sorted({b for b in BUCKETS if b < max_batch} | {max_batch}))


def resolve_device(device: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def user_model(model: Model) -> str | None:
    """The operator's name of a user's model (flowmap.user: a factory or .pt/.onnx file), else None."""
    return (model.config.get("arch") or {}).get("user")


def user_onnx(model: Model) -> bool:
    """A user's ONNX file: it runs in ONNX Runtime whatever the engine, so torch.autocast cannot reach it."""
    return str(user_model(model)).endswith(".onnx")


def pick_engine(settings: ServerSettings, device: str, model: Model) -> str:
    if settings.precision == "auto":  # the float32 engine picked as for fp32; bf16 joins it (with_bf16)
        if settings.engine and settings.engine in VARIANTS:
            raise EngineError(
                f"--precision auto pairs a float32 engine with eager-bf16; engine {settings.engine!r} is a "
                "precision variant: pass a float32 engine (or none) with auto, or drop --precision"
            )
    elif settings.precision != "fp32":  # only eager computes in another precision (autocast)
        if user_onnx(model):
            raise EngineError(
                f"--precision {settings.precision} runs the network under torch.autocast, which cannot reach "
                f"into a user's ONNX file ({user_model(model)}): serve it in fp32, or export it in "
                f"{settings.precision} yourself"
            )
        variant = f"eager-{settings.precision}"
        if settings.engine not in (None, "eager", variant):
            raise EngineError(
                f"--precision {settings.precision} runs on the eager engine (torch.autocast); engine "
                f"{settings.engine!r} computes in float32: drop --engine or pass --engine eager"
            )
        return variant
    if settings.engine:
        return settings.engine
    if user_onnx(model):
        return "eager"  # a user's ONNX file already runs in ONNX Runtime
    from engines import default_engine

    return default_engine(device)


def export_in_child(spec: str, engine_name: str, out: Path) -> str:
    """The ONNX export of `spec` written by a short-lived `flowmap export` process; returns its path.

    The exporter imports ~250 MB of modules (torch.export, onnxscript) that would otherwise stay
    resident in the engine core for its whole life; loading the verified artifact needs none of them."""
    cmd = [sys.executable, "-m", "flowmap", "export", "--model", spec, "--engine", engine_name]
    cmd += ["--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise RuntimeError(f"ONNX export failed: {lines[-1] if lines else done.returncode}")
    return str(out)


def samplers_of(model: Model) -> tuple[list[str], str]:
    """(samplers served, the default): "consistency" needs the linear interpolant (the fused re-noise
    step assumes it) and is the default of consistency models (ct, cd), which learn only X_{t,0}."""
    if model.config.get("interpolant", "linear") != "linear":
        return ["flowmap"], "flowmap"
    default = "consistency" if model.config.get("method") in CONSISTENCY_METHODS else "flowmap"
    return list(SAMPLERS), default


def model_spec(model: Model, engine: str, device: str, precision: str = "fp32") -> ModelSpec:
    """What the API processes are told about the model (one record, built here only)."""
    samplers, default = samplers_of(model)
    return ModelSpec(
        name=model.name,
        shape=list(model.shape),
        num_classes=model.num_classes,
        image=is_image(list(model.shape)),
        engine=engine,
        device=device,
        precision=precision,
        baked_guidance_scale=float((model.config.get("guidance") or {}).get("baked_scale", 1.0)),
        method=model.config.get("method"),
        samplers=samplers,
        default_sampler=default,
        class_names=class_names(model.config.get("data") or {}),
    )


def load_served_engine(
    spec: str, model: Model, engine_name: str, settings: ServerSettings, device: str, workdir
):
    """The engine for `model`; with a `workdir`, an onnxruntime engine is exported there by a child process
    and loaded as an artifact (the exported file is removed once loaded)."""
    from engines import load_engine

    source = engine_name
    if workdir is not None and engine_name == "onnxruntime":
        source = export_in_child(spec, engine_name, Path(workdir) / f"{Path(spec).stem}-{os.getpid()}.onnx")
    engine = load_engine(source, model, device=device, buckets=buckets_for(settings.max_batch_size))
    if source != engine_name:  # loaded: the exported file (and its sidecar) is not needed any more
        for path in (Path(source), Path(source + ".json")):
            path.unlink(missing_ok=True)
    return engine


def build_core(
    spec: str, settings: ServerSettings, on_iteration=None, workdir: str | None = None
) -> tuple[EngineCore, Model, ModelSpec]:
    """Load model `spec` and its engine; returns (core, model, its ModelSpec for the API)."""
    model = load_model(spec)
    device = resolve_device(settings.device)
    engine_name = pick_engine(settings, device, model)
    try:
        engine = load_served_engine(spec, model, engine_name, settings, device, workdir)
    except (RuntimeError, ValueError) as e:  # EngineError, a failed export: a user model may not export
        if settings.engine or not user_model(model) or engine_name == "eager":
            raise
        log.warning("model %s: engine %s refused (%s); serving it on eager", model.name, engine_name, e)
        engine_name = "eager"
        engine = load_served_engine(spec, model, engine_name, settings, device, workdir)
    if settings.precision == "auto":
        engine = with_bf16(engine, engine_name, model, settings, device)
        engine_name = engine.name
    sched = Scheduler(
        max_batch=settings.max_batch_size,
        max_queue=settings.max_queue,
        max_wait=settings.max_wait_ms / 1000,
        max_steps=settings.max_steps,
        timer=CallTimer(),
        batching=settings.batching,
        exit_early=settings.early_exit,
    )
    executor = Executor(
        engine, null_label=model.num_classes, conditional=model.num_classes > 0, device=device
    )
    core = EngineCore(model.name, sched, executor, on_iteration, max_queue=settings.max_queue_ms / 1000)
    return core, model, model_spec(model, engine_name, device, precision_of(engine))


def with_bf16(engine, engine_name: str, model: Model, settings: ServerSettings, device: str) -> ByRows:
    """--precision auto: the float32 `engine` and eager-bf16 behind one ByRows (warm_up times them and
    routes each bucket); the float32 engine alone when bf16 cannot be built or fails parity."""
    from engines import load_engine

    buckets = buckets_for(settings.max_batch_size)
    pair = {engine_name: engine}
    if user_onnx(model):
        log.warning(
            "model %s: --precision auto serves float32 only: autocast cannot reach an ONNX file", model.name
        )
        return ByRows(pair, buckets)
    try:
        pair["eager-bf16"] = load_engine("eager-bf16", model, device=device, buckets=buckets)
    except Exception as e:  # bf16 is an add-on: a model that fails under autocast still serves in float32
        log.warning("model %s: --precision auto serves float32 only: bf16 refused (%s)", model.name, e)
    return ByRows(pair, buckets)


def precision_of(engine) -> str:
    """The precision GET /v1/models shows: fp32 / bf16, or ByRows' per-bucket choice ("auto: ...")."""
    if isinstance(engine, ByRows):
        return engine.precision()
    return PRECISION_NAMES.get(engine.dtype, str(engine.dtype))


def warm_up(core: EngineCore, model: Model, settings: ServerSettings) -> dict[int, float]:
    """The engine's own warm-up, then real 1-step batches at every bucket: they seed the call-time estimate,
    and their costs (best of a few) set the largest batch the scheduler fills (admission.batch_cap, unless
    --batch-knee 0). Returns the costs, seconds by rows.

    Raises when a warm-up batch fails: a model that cannot run must not be reported ready."""
    core.warmup()
    engine = core.executor.engine
    if isinstance(engine, ByRows) and len(engine.engines) > 1:  # --precision auto: each bucket's engine
        engine.choose(model)
        per = lambda c: ", ".join(f"{b}: {1e3 * t:.1f}" for b, t in c.items())
        timed = "; ".join(f"{n}: {per(c)}" for n, c in engine.costs.items())
        log.info("model %s: %s (ms per call by rows: %s)", model.name, engine.precision(), timed)
    costs = {n: calibrate(core, model, n) for n in buckets_for(settings.max_batch_size)}
    if settings.batch_knee > 0:
        core.scheduler.max_batch = admission.batch_cap(
            costs, settings.batch_knee, free=settings.batch_free_ms / 1000
        )
    log.info(
        "model %s: batches up to %d rows (ms per step by rows: %s)",
        model.name,
        core.scheduler.max_batch,
        ", ".join(f"{n}: {1e3 * t:.1f}" for n, t in costs.items()),
    )
    release = getattr(engine, "release_memory", None)  # a user's engine class may not have it
    try:
        if release is not None:
            release()  # what the largest buckets' calls left cached (the C heap is trimmed at the freeze)
    except Exception as e:  # memory, not correctness: the engine serves as it is
        log.warning("model %s: the engine kept its warm-up memory (%s: %s)", model.name, type(e).__name__, e)
    return costs


def calibrate(core: EngineCore, model: Model, n: int, reps: int = 3, long: float = 0.25) -> float:
    """Seconds of one iteration of `n` rows through the core, the best of `reps` (one when a call takes
    over `long` seconds: the noise is small against it, and the warm-up stays short)."""
    best = float("inf")
    for _ in range(reps):
        job = Job(noise=make_noise(n, model.shape, 0, core.device), labels=[0] * n, steps=1)
        t0 = core.clock()
        core.submit(job)
        core.run_until_idle()
        sync(core.device)
        best = min(best, core.clock() - t0)
        if job.error is not None:
            raise RuntimeError(f"warm-up batch of {n} failed: {job.error!r}") from job.error
        if not bool(torch.isfinite(job.result).all()):
            raise RuntimeError(f"warm-up batch of {n} gave non-finite samples")
        if best > long:
            break
    return best
