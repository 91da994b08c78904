"""Server settings: one typed object from flags (`flowmap serve --max-batch-size 64`) or FLOWMAP_* vars."""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class ServerSettings(BaseSettings):
    """Every field is also an environment variable: FLOWMAP_<FIELD> (lists comma-separated)."""

    model_config = SettingsConfigDict(env_prefix="FLOWMAP_", extra="forbid", validate_default=True)

    models: Annotated[list[str], NoDecode] = Field(
        default=["mnist", "digits"],
        min_length=1,
        max_length=16,
        description="Models to serve: shipped names (mnist, digits, gmm8, digits_uncond), .safetensors "
        "paths, or users' models (pkg.module:fn, or .pt/.onnx with a JSON manifest; docs/models.md); the "
        "first is the default for requests that name none.",
    )
    engine: str | None = Field(
        default=None,
        description="Engine name (eager, torchscript, compile, onnxruntime, ...); "
        "default: engines.default_engine(device) when available, else eager.",
    )
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="Torch device for the engines; auto: cuda when available, else cpu.",
    )
    host: str = Field(default="127.0.0.1", min_length=1, description="Address to bind.")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port (0: any free port).")
    health_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="A second TCP port that answers only GET /healthz and /readyz, from a thread of each API "
        "process, so probes never wait behind request work on the event loop (point the kubelet's "
        "probes at it); /healthz there fails when the event loop has not turned for 10 s. Default: "
        "probes on the main port only.",
    )
    max_batch_size: int = Field(
        default=128,
        ge=1,
        le=4096,
        description="Most network rows per engine call (a guided sample takes two).",
    )
    batch_knee: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description="Batches grow only while they pay: at start-up each engine core times a step at every "
        "batch size up to max_batch_size and fills batches only up to the smallest size of at least 8 rows "
        "whose rows per second reach this share of the best measured (more rows would slow every row for "
        "little throughput; requests past it wait in the queue, bounded by max_queue_ms). 0: always fill up "
        "to max_batch_size.",
    )
    batch_free_ms: float = Field(
        default=10.0,
        ge=0,
        le=10_000,
        description="With batch_knee > 0, batches also fill up to the largest size whose step the start-up "
        "timed at most this long, if the knee is smaller: a step that short costs a request nothing it "
        "notices, and served iterations pay per-iteration costs the idle timing leaves out (digits: 128 "
        "rows, where the knee wavered between 16 and 64 from one start to the next). 0: the knee alone.",
    )
    max_queue: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="Most requests waiting per model; beyond it requests get 429.",
    )
    max_queue_ms: float = Field(
        default=250.0,
        gt=0,
        le=600_000,
        description="Longest predicted queue wait a new request may be given (ms); a request predicted to "
        "wait longer, or to finish past its own deadline, gets 429 with Retry-After at once. 250 ms: "
        "tens of full batches at this server's step costs, under a second of tail latency, far inside "
        "client and probe timeouts; a longer queue only turns 429s now into 504s later.",
    )
    max_wait_ms: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        description="Batching window of an idle engine core, from the first queued request (0: an idle core "
        "starts a request at once; what arrives while it computes joins at the next step).",
    )
    early_exit: bool = Field(
        default=True,
        description="Re-plan at every step boundary: a row whose deadline is at risk jumps straight to data "
        "(fewer steps, reported) instead of missing it. off: steps are chosen once, at admission (the "
        "choose-once baseline, for benchmarks); a request whose steps cannot fit its deadline gets 504.",
    )
    default_steps: int = Field(default=1, ge=1, le=1000, description="Steps when a request gives none.")
    max_steps: int = Field(
        default=8, ge=1, le=1000, description="Largest steps a request may ask; auto's cap."
    )
    max_samples: int = Field(default=64, ge=1, le=4096, description="Largest num_samples per request.")
    max_guidance: float = Field(default=20.0, ge=1, le=1000, description="Largest |guidance_scale| accepted.")
    max_particles: int = Field(
        default=16,
        ge=0,
        le=1024,
        description="Most particles per sample of a steered request (the 'steer' option; 0: refused).",
    )
    max_steer_rows: int = Field(
        default=512,
        ge=1,
        le=65_536,
        description="Most rows (num_samples x particles) of one steered request.",
    )
    max_steer_scale: float = Field(
        default=100.0, ge=0, le=1e6, description="Largest reward scale a steered request may ask."
    )
    steer_user_rewards: Annotated[list[str], NoDecode] = Field(
        default=[],
        max_length=64,
        description="User rewards (exact 'package.module:function' specs, comma-separated) that steered "
        "requests may name; the engine core imports them. Default: none, built-in rewards only.",
    )
    request_timeout_ms: float = Field(
        default=30_000,
        ge=1,
        le=3_600_000,
        description="Request deadline when the request gives no deadline_ms (and the largest it may give); "
        "past it the answer is 504.",
    )
    drain_timeout_s: float = Field(
        default=30.0, ge=0, le=3600, description="On SIGTERM, how long accepted requests may take to finish."
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="When set, /v1 and /v2 model routes need 'Authorization: Bearer KEY' or "
        "'X-API-Key: KEY' (health, readiness and metrics stay open).",
    )
    max_body_bytes: int = Field(
        default=65_536, ge=1024, le=64 * 2**20, description="Largest request body; larger ones get 413."
    )
    batching: Literal["step", "request"] = Field(
        default="step",
        description="step: samples join and leave at step boundaries; request: whole-request "
        "batches (the baseline diffusion servers use; for benchmarks).",
    )
    threads: int = Field(default=1, ge=1, le=256, description="Torch intra-op threads per engine core.")
    precision: Literal["fp32", "bf16", "auto"] = Field(
        default="fp32",
        description="Compute precision of the network. bf16: the eager engine under torch.autocast, weights "
        "kept in float32 (1.2-1.5x the rows per second of float32 ONNX Runtime for the mnist U-Net from 8 "
        "rows on a CPU with AMX-BF16, half as fast at 1 row; checked against float32 at load, relative "
        "error <= 3e-2). auto: both the float32 engine and bf16, timed at every batch bucket at start-up; "
        "each step runs on the one faster at its row count (bf16 only where >= 10% faster; docs/engines.md); "
        "a result's pixels can then depend on its batch-mates (bf16 rounding), with fp32 they do not.",
    )
    api_workers: int | Literal["auto"] = Field(
        default="auto",
        description="HTTP front-end processes (decode, validate, encode; no torch); auto: one per two CPUs "
        "this process may use, at least 1, at most 8 (the engine cores take the rest).",
    )
    max_connections: int = Field(
        default=1024, ge=1, le=1_000_000, description="Open connections per API process; more are refused."
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="A connection whose request headers are not in within this closes.",
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, le=3600, description="A request body not received within this gets 408."
    )
    keep_alive_s: float = Field(
        default=5.0, gt=0, le=3600, description="An idle keep-alive connection closes after this."
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="Uvicorn log level."
    )

    @field_validator("models", "steer_user_rewards", mode="before")
    @classmethod
    def _split(cls, v):
        return [m.strip() for m in v.split(",") if m.strip()] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _steps_in_range(self) -> ServerSettings:
        if self.default_steps > self.max_steps:
            raise ValueError(f"default_steps ({self.default_steps}) must be <= max_steps ({self.max_steps})")
        return self

    @field_validator("api_workers", mode="before")
    @classmethod
    def _workers(cls, v):
        if isinstance(v, str) and v.strip() != "auto":
            return int(v) if v.strip().isdigit() else v
        return v

    @field_validator("api_workers")
    @classmethod
    def _workers_range(cls, v):
        if v != "auto" and not 1 <= v <= 64:
            raise ValueError("api_workers must be 'auto' or 1..64")
        return v

    def api_processes(self) -> int:
        """api_workers resolved: 'auto' is one per two usable CPUs, 1..8."""
        if self.api_workers != "auto":
            return self.api_workers
        return max(1, min(8, len(os.sched_getaffinity(0)) // 2))

    def key(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key else None
