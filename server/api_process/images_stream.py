"""OpenAI's image stream on /v1/images/generations (`"stream": true`), as the openai SDK parses it
(`client.images.generate(..., stream=True, partial_images=P)` yields openai.types.ImageGenStreamEvent):

- `event: image_generation.partial_image`, data `{type, b64_json, partial_image_index, created_at, size,
  output_format, quality, background}` and ours: `index` (which of the n images), `step`, `steps`: the
  image's preview (its jump to data X_{s,0}, server.api_process.stream) after that step, in the request's
  output_format;
- `event: image_generation.completed`, one per image, last: `{type, b64_json, created_at, size,
  output_format, quality, background, usage}` and, as extra fields, the plain response's own (model,
  steps, seed, class_label, guidance_scale, sampler, timings) and its data[i]'s (revised_prompt, index):
  b64_json is exactly data[i].b64_json of the same request without `stream`;
- `event: error`, instead of the completed events when the request fails after the stream began:
  `{"type": "error", "status": S, "error": {message, type, param, code}}` (the SDK raises APIError).

`partial_images` P (0..3, OpenAI's range; default 0, as OpenAI's) chooses the previews sent
(`partial_steps`): P steps spread evenly over the K steps, the last step left out (its preview is the
final image), so a K-step request sends at most K - 1 (as OpenAI allows: "the final image may be sent
before the full number of partial images"). With P = 0 the core computes no previews at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pydantic import BaseModel

from server.api_process.encode import images
from server.api_process.service import GenResult, Preview
from server.api_process.stream import Codec, event, json_line

PARTIAL, COMPLETED = "image_generation.partial_image", "image_generation.completed"
MAX_PARTIAL_IMAGES = 3  # OpenAI's range of partial_images: 0..3
SETTINGS = {"quality": "auto", "background": "auto"}  # OpenAI settings this server offers no choice of
USAGE = {  # OpenAI's token usage: a flow map reads and writes no tokens
    "input_tokens": 0,
    "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
    "output_tokens": 0,
    "total_tokens": 0,
}


def partial_steps(steps: int, partial_images: int) -> list[int]:
    """The steps (1..K) whose previews are partial images 0, 1, ...: step ceil(j K / (P + 1)) for j = 1..P,
    without repeats and without the last step (K = 4: P = 1 -> [2], P = 2 -> [2, 3], P = 3 -> [1, 2, 3])."""
    chosen = {-(-j * steps // (partial_images + 1)) for j in range(1, partial_images + 1)}
    return sorted(k for k in chosen if k < steps)


def partial_events(v: Preview, partial_images: int, fmt: str, quality: int | None, size: str) -> bytes:
    """One partial_image event per image for a chosen step (b"" for the others)."""
    steps = partial_steps(v.steps, partial_images)
    if v.step not in steps:
        return b""
    head = {"type": PARTIAL, "partial_image_index": steps.index(v.step), "created_at": int(time.time())}
    head |= {"size": size, "output_format": fmt, **SETTINGS}
    return b"".join(
        event(PARTIAL, json_line({**head, "b64_json": b64, "index": i, "step": v.step, "steps": v.steps}))
        for i, b64 in enumerate(images(v.x, fmt, quality))
    )


def completed_events(response: BaseModel) -> bytes:
    """One completed event per image of the plain response (its fields ride along as extensions)."""
    body = response.model_dump()
    data, created = body.pop("data"), body.pop("created")
    openai = {"type": COMPLETED, "created_at": created, **SETTINGS, "usage": USAGE}  # after ours: they win
    return b"".join(event(COMPLETED, json_line({**body, **item, **openai})) for item in data)


def error_event(status: int, body: dict) -> bytes:
    return event("error", json_line({"type": "error", "status": status, **body}))


def codec(
    partial_images: int, respond: Callable[[GenResult], BaseModel], fmt: str, quality: int | None, size: str
) -> Codec:
    """The images route's stream: `respond` makes the plain response of a finished request."""
    return Codec(
        preview=lambda v: partial_events(v, partial_images, fmt, quality, size),
        result=lambda r: completed_events(respond(r)),
        error=error_event,
        previews=partial_images > 0,
    )
