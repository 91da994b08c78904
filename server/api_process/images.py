"""OpenAI's images API: `POST /v1/images/generations`, a thin codec over the one generate call
(server.api_process.http.generate), so existing OpenAI SDKs and tools work with only `base_url` and
`api_key` changed.

- `prompt` names a class of a class-conditional model: its index ("7") or its name ("seven"), the whole
  prompt with surrounding whitespace and case ignored; anything else is a 400 that lists the classes.
  An unconditional model accepts any prompt and ignores it.
- `size` is the model's own "WxH" (or "auto"); `response_format` is `b64_json` only; `output_format` png,
  webp or jpeg, with `output_compression` as the WebP/JPEG quality (v1's `quality`).
- Extensions: `steps` (or "auto" with `deadline_ms`), `seed`, `guidance_scale`, `sampler`: v1's fields,
  through v1's schema pieces (server.api_process.schemas.generation_fields) and the same checks.
- Image i is sample i of the request's seed: the same as v1's /generate with that seed, steps and
  num_samples = n; every image reports the seed and its index.
- `stream` (with `partial_images`, 0..3) answers OpenAI's image events (server.api_process.images_stream),
  not v1's preview/result events; `partial_images` without `stream` is a 400 naming it.
"""

# no `from __future__ import annotations`: the request model is built at runtime from the settings
import time
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, create_model

from server.api_process import http, images_stream, stream
from server.api_process.encode import IMAGE_FORMATS, images, quality_problem
from server.api_process.protocol import OPENAI_TYPES, STATUSES, steps_for
from server.api_process.schemas import Timings, generation_fields
from server.api_process.service import GenParams, GenResult, InvalidInput, Service, ServiceError
from server.common.settings import ServerSettings
from server.common.spec import ModelSpec

ROUTE = "/v1/images/generations"
MAX_PROMPT = 4000


class ImageData(BaseModel):
    b64_json: str = Field(description="The image, base64 of the output_format file.")
    revised_prompt: str | None = Field(
        None, description="The class the prompt named, as its name (or index); None: unconditional model."
    )
    seed: int = Field(description="The request's seed (image i is sample i of it).")
    index: int = Field(description="i: the image's place in the request.")


class ImagesResponse(BaseModel):
    created: int = Field(description="Unix time, seconds.")
    data: list[ImageData]
    model: str
    size: str = Field(description="WxH of every image.")
    output_format: str
    steps: int = Field(description="Steps used (the chosen count when the request asked for 'auto').")
    seed: int = Field(description="Seed of the noise (the server draws one when the request gave none).")
    class_label: int | None = Field(description="The class of every image (None: unconditional model).")
    guidance_scale: float
    sampler: str
    timings: Timings


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = Field(None, description="The request field at fault, when one is.")
    code: str | None = None


class OpenAIError(BaseModel):
    """OpenAI's error body (every error status of this route)."""

    error: OpenAIErrorDetail


def images_request_model(s: ServerSettings) -> type[BaseModel]:
    """The images body: OpenAI's fields, and v1's as extensions (generation_fields: one place per range)."""
    shared = generation_fields(s)
    word = lambda desc: (StrictStr | None, Field(None, max_length=64, description=desc))
    fields = {
        "model": shared["model"],
        "prompt": (
            StrictStr,
            Field(
                min_length=1,
                max_length=MAX_PROMPT,
                description="A class of a class-conditional model: its index or its name (GET /v1/models "
                "class_names), whole, case ignored. Ignored by an unconditional model.",
            ),
        ),
        "n": shared["num_samples"],
        "size": word("The model's own WxH (e.g. 28x28), or auto."),
        "response_format": (
            Literal["b64_json", "url"] | None,
            Field(None, description="b64_json (the default); url is not served (400)."),
        ),
        "output_format": (
            StrictStr | None,
            Field(None, max_length=16, description=f"{' | '.join(IMAGE_FORMATS)}; default png."),
        ),
        "output_compression": shared["quality"],  # v1's quality, under OpenAI's name
        "quality": word("Accepted and ignored (OpenAI's quality; see output_compression)."),
        "style": word("Accepted and ignored (OpenAI's style)."),
        "user": (StrictStr | None, Field(None, max_length=256, description="Accepted and ignored.")),
        **{k: shared[k] for k in ("steps", "seed", "guidance_scale", "sampler", "deadline_ms", "stream")},
        "partial_images": (
            StrictInt | None,
            Field(
                None,
                ge=0,
                le=images_stream.MAX_PARTIAL_IMAGES,
                description="With stream: how many step previews to send as partial images (spread over the "
                "steps, the last left out; default 0).",
            ),
        ),
    }
    return create_model("ImagesRequest", __config__=ConfigDict(extra="forbid"), **fields)


def size_of(spec: ModelSpec) -> str:
    """An image model's WxH (shape [C, H, W])."""
    return f"{spec.shape[2]}x{spec.shape[1]}"


def class_of(prompt: str, spec: ModelSpec) -> int | None:
    """The class `prompt` names on a conditional model (None: unconditional); InvalidInput naming the
    classes when it names none."""
    if not spec.conditional:
        return None
    table = {str(i): i for i in range(spec.num_classes)}
    table |= {name.casefold(): i for i, name in enumerate(spec.class_names)}
    c = table.get(prompt.strip().casefold())
    if c is None:
        shown = prompt if len(prompt) <= 64 else prompt[:61] + "..."
        names = f"; or a name: {', '.join(spec.class_names)}" if spec.class_names else ""
        raise InvalidInput(
            f"prompt {shown!r} names no class of model {spec.name!r}: give a class index "
            f"0..{spec.num_classes - 1}{names}",
            "prompt",
        )
    return c


def check_output(body, spec: ModelSpec) -> str:
    """The output format, after the OpenAI fields this server does not serve are refused."""
    if not spec.image:
        raise InvalidInput(f"model {spec.name!r} is not an image model; use /v1/generate", "model")
    if body.response_format == "url":
        raise InvalidInput(
            "response_format 'url' is not served: images come inline, use b64_json", "response_format"
        )
    if body.size not in (None, "auto", size_of(spec)):
        raise InvalidInput(f"size {body.size!r}: model {spec.name!r} makes {size_of(spec)} images", "size")
    fmt = body.output_format or "png"
    if fmt not in IMAGE_FORMATS:
        raise InvalidInput(
            f"output_format {fmt!r}: this server serves {', '.join(IMAGE_FORMATS)}", "output_format"
        )
    if problem := quality_problem(fmt, body.output_compression):
        raise InvalidInput(problem, "output_compression")
    return fmt


def partials_of(body) -> int:
    """The partial images a request asks; InvalidInput when it asks them without `stream`."""
    if body.partial_images is not None and not body.stream:
        raise InvalidInput("partial_images needs stream: true (they are streamed)", "partial_images")
    return body.partial_images or 0


def to_params(body, spec: ModelSpec, default_steps: int) -> GenParams:
    """The images body as GenParams for `spec`'s model."""
    fmt = check_output(body, spec)
    return GenParams(
        model=spec.name,
        steps=steps_for(body.steps, default_steps),
        num_samples=body.n,
        seed=body.seed,
        class_label=class_of(body.prompt, spec),
        guidance_scale=body.guidance_scale,
        deadline_ms=body.deadline_ms,
        output=fmt,
        quality=body.output_compression,
        sampler=body.sampler,
        stream=body.stream,
    )


def to_response(r: GenResult, spec: ModelSpec, p: GenParams) -> ImagesResponse:
    label = r.labels[0] if r.labels else None
    named = None if label is None else (spec.class_names[label] if spec.class_names else str(label))
    data = [
        ImageData(b64_json=b64, revised_prompt=named, seed=r.seed, index=i)
        for i, b64 in enumerate(images(r.x, p.output, p.quality))
    ]
    return ImagesResponse(
        created=int(time.time()),
        data=data,
        model=r.model,
        size=size_of(spec),
        output_format=p.output,
        steps=r.steps,
        seed=r.seed,
        class_label=label,
        guidance_scale=r.guidance,
        sampler=r.sampler,
        timings=r.timings,
    )


def router(service: Service, auth: list) -> APIRouter:
    ImagesRequest = images_request_model(service.settings)
    errors = {status: {"model": OpenAIError, "description": STATUSES[status]} for status in OPENAI_TYPES}
    errors["4XX"] = {"model": OpenAIError, "description": "any other client error (never FastAPI's 422)"}
    errors |= stream.openapi(f"`{images_stream.PARTIAL}` events, then `{images_stream.COMPLETED}` per image")
    api = APIRouter(tags=["OpenAI images"])

    @api.post(ROUTE, response_model=ImagesResponse, dependencies=auth, responses=errors)
    async def generations(body: ImagesRequest, request: Request):  # type: ignore[valid-type]
        """Generate images, OpenAI-style: `prompt` names the class; v1's steps, seed, guidance_scale and
        sampler are extensions."""
        t0 = time.monotonic()
        try:
            spec = service.entry(body.model).spec
            p = to_params(body, spec, service.settings.default_steps)
            partials = partials_of(body)
        except ServiceError as e:
            http.failed(service, request, e, body.model, body.steps, t0)
            raise
        respond = lambda r: to_response(r, spec, p)
        if p.stream:
            codec = images_stream.codec(partials, respond, p.output, p.quality, size_of(spec))
            return await stream.respond(service, p, request, codec, t0)
        encode = lambda r: respond(r).model_dump_json()
        return Response(await http.generate(service, p, request, encode, t0), media_type="application/json")

    return api
