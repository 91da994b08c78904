"""Pydantic schemas of the v1 JSON API; limits come from the settings, so /openapi.json shows them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, create_model

from server.api_process.protocol import SAMPLERS
from server.common.ranges import SEED_MAX
from server.common.settings import ServerSettings

MAX_CLASS = 100_000


class Timings(BaseModel):
    queue_ms: float = Field(description="Submission to first admission into a batch.")
    compute_ms: float = Field(description="First admission to the last sample's last step.")
    total_ms: float = Field(description="Request arrival to samples back from the engine core.")


class GenerateResponse(BaseModel):
    model: str
    steps: int = Field(description="Steps used (the chosen count when the request asked for 'auto').")
    seed: int = Field(description="Seed of the noise (the server draws one when the request gave none).")
    num_samples: int
    class_labels: list[int] | None = Field(description="Class of each sample (None: unconditional model).")
    guidance_scale: float
    sampler: str = Field("flowmap", description="The sampler used: flowmap or consistency.")
    output: Literal["png", "webp", "jpeg", "npy"]
    shape: list[int] = Field(description="Shape of one sample in model space.")
    images: list[str] | None = Field(
        default=None, description="One base64 image per sample in the output format (png, webp, jpeg)."
    )
    array: str | None = Field(default=None, description="base64 .npy of float32 [N, *shape] (output='npy').")
    timings: Timings
    network_calls_per_sample: int = Field(
        0, description="Network rows evaluated per returned sample: steps x particles (a guided row twice)."
    )


class ModelInfo(BaseModel):
    name: str
    shape: list[int]
    num_classes: int
    image: bool
    engine: str
    precision: str = Field(
        "fp32",
        description="The compute precision (--precision): fp32, bf16, or auto's split by batch rows, e.g. "
        "'auto: fp32 below 8 rows, bf16 from 8 rows'.",
    )
    default_guidance_scale: float
    baked_guidance_scale: float
    method: str | None = None
    default_sampler: str = Field("flowmap", description="The sampler a request gets when it names none.")
    samplers: list[str] = Field(["flowmap"], description="The samplers this model serves.")
    class_names: list[str] = Field(
        [], description="One name per class (the images route's prompt may name one); empty: by index."
    )


class ModelList(BaseModel):
    models: list[ModelInfo]
    default: str
    failed: dict[str, str] = Field(
        default_factory=dict,
        description="Models the operator named that failed to load (its --model -> why); not served.",
    )


class Health(BaseModel):
    status: str


class V2Error(BaseModel):
    """Open Inference Protocol error body (every v2 error status)."""

    error: str = Field(description="What was wrong, naming the input or output when one was.")


def steer_option_model(s: ServerSettings) -> type[BaseModel]:
    """The "steer" object: reward steering over particles in the step-level batch (docs/steering.md)."""
    fields = {
        "reward": (
            StrictStr,
            Field(
                min_length=1,
                max_length=256,
                description="class:C (digits), ink (images), mode:K (gmm8), or a user reward the operator "
                "listed in steer_user_rewards.",
            ),
        ),
        "scale": (
            StrictFloat,
            Field(1.0, ge=0, le=s.max_steer_scale, allow_inf_nan=False, description="Reward scale."),
        ),
        "particles": (
            StrictInt,
            Field(
                min(8, max(1, s.max_particles)),
                ge=1,
                le=max(1, s.max_particles),
                description=f"Per sample, 1..{s.max_particles} (0: this server refuses steer).",
            ),
        ),
        "method": (
            Literal["sir", "best", "guide"],
            Field("sir", description="sir: importance resampling; best: best-of-N; guide: not served (422)."),
        ),
    }
    return create_model("SteerOption", __config__=ConfigDict(extra="forbid"), **fields)


def _sampler_options(s: ServerSettings) -> dict:
    """The request's sampler and steering fields (generate_request_model)."""
    return {
        "sampler": (
            Literal[SAMPLERS] | None,
            Field(
                None,
                description="flowmap: X_{t_k,t_k+1} per step (deterministic); consistency: jump to data with "
                "X_{t_k,0}, then re-noise to t_k+1 with per-sample noise from the seed (consistency models). "
                "Default: the model's default_sampler (GET /v1/models).",
            ),
        ),
        "steer": (
            steer_option_model(s) | None,
            Field(
                None,
                description="Steer toward a reward: each sample is the survivor of `particles` particles "
                "resampled at every step by the reward of their jump to data (consistency sampler).",
            ),
        ),
    }


def _delivery_options(s: ServerSettings) -> dict:
    """How the answer comes back: image quality, the deadline, streamed previews."""
    return {
        "quality": (
            StrictInt | None,
            Field(None, ge=1, le=100, description="WebP and JPEG quality 1..100 (lossy both); default 90."),
        ),
        "deadline_ms": (
            StrictFloat | None,
            Field(
                None,
                ge=1,
                le=s.request_timeout_ms,
                allow_inf_nan=False,
                description="Answer within this or get 504.",
            ),
        ),
        "stream": (
            StrictBool,
            Field(
                False,
                description="true: answer text/event-stream: per-step previews (every sample's jump to "
                "data), then the result; v1's `preview`/`result` events, OpenAI's image events on the images "
                "route (docs/server.md).",
            ),
        ),
    }


def generation_fields(s: ServerSettings) -> dict:
    """The fields every generating JSON route takes (v1's /generate, the images route), with this server's
    limits: each range is written here once. Strict types: no "2" or true for an integer, no 2.0 for a
    count; floats take JSON integers (2 is 2.0) but never NaN or Infinity."""
    steps = Annotated[StrictInt, Field(ge=1, le=s.max_steps)]
    return {
        "model": (
            StrictStr | None,
            Field(
                None,
                min_length=1,
                max_length=512,
                description="Model name (GET /v1/models); default: the first served.",
            ),
        ),
        "steps": (
            steps | Literal["auto"] | None,
            Field(
                None,
                description=f"1..{s.max_steps}, or 'auto': the most steps predicted to meet deadline_ms. "
                f"Default {s.default_steps}.",
            ),
        ),
        "num_samples": (StrictInt, Field(1, ge=1, le=s.max_samples, description=f"1..{s.max_samples}.")),
        "seed": (
            StrictInt | None,
            Field(
                None,
                ge=0,
                le=SEED_MAX,
                description="Noise seed; same seed and steps give the same samples as "
                "`flowmap sample --seed`. Default: random.",
            ),
        ),
        "guidance_scale": (
            StrictFloat | None,
            Field(
                None,
                ge=-s.max_guidance,
                le=s.max_guidance,
                allow_inf_nan=False,
                description="Classifier-free guidance w: u_null + w (u_cond - u_null); 1 = one network "
                "call per step. Default 1 (a model trained with guidance has it baked in).",
            ),
        ),
        "sampler": _sampler_options(s)["sampler"],
        **_delivery_options(s),
    }


def generate_request_model(s: ServerSettings) -> type[BaseModel]:
    """The /v1/generate body, with this server's limits (generation_fields, plus v1's own)."""
    label = Annotated[StrictInt, Field(ge=0, le=MAX_CLASS)]
    shared = generation_fields(s)
    fields = {
        **{k: shared[k] for k in ("model", "steps", "num_samples", "seed")},
        "class_label": (
            label | list[label] | None,
            Field(
                None,
                description="A class for all samples or one per sample; omitted on a conditional model: "
                "classes cycle 0..C-1 (as `flowmap sample`).",
            ),
        ),
        "guidance_scale": shared["guidance_scale"],
        **_sampler_options(s),
        "output": (
            Literal["png", "webp", "jpeg", "npy"],
            Field(
                "png",
                description="png, webp, jpeg: one base64 image per sample (image models); npy: base64 .npy "
                "of float32 model-space samples.",
            ),
        ),
        "quality": shared["quality"],
        "deadline_ms": shared["deadline_ms"],
        "stream": shared["stream"],
    }
    return create_model("GenerateRequest", __config__=ConfigDict(extra="forbid"), **fields)


def _text(v, limit: int) -> str:
    """str(v) cut to `limit` characters, with what UTF-8 cannot encode (lone surrogates) replaced."""
    return str(v)[:limit].encode("utf-8", "replace").decode("utf-8")


def safe_errors(errors: list[dict]) -> list[dict]:
    """Validation errors that always serialise as strict JSON: the offending input is left out (it may be
    NaN, Infinity, huge or binary), context values become strings, and no string keeps a lone surrogate
    (a JSON key "\\ud800" would otherwise fail the UTF-8 encoding of the response)."""
    out = []
    for err in errors:
        e = {k: v for k, v in err.items() if k not in ("input", "ctx", "url")}
        if "msg" in e:
            e["msg"] = _text(e["msg"], 500)
        if "ctx" in err:
            e["ctx"] = {_text(k, 100): _text(v, 200) for k, v in err["ctx"].items()}
        e["loc"] = [v if isinstance(v, int) else _text(v, 100) for v in err.get("loc", ())]
        out.append(e)
    return out
