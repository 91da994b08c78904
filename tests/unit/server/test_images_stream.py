"""OpenAI's image stream on /v1/images/generations: the encoder's bytes read back by the openai SDK's own
SSE decoder and event types, and the real SDK (AsyncOpenAI over an in-process ASGI transport) streaming
from the route over the toy core of test_service_app: event types and counts per partial_images, the
completed images equal to the plain response, a failure mid-stream raised as the SDK's APIError, and every
bad partial_images a 400 naming it."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from server.api_process.app import create_app
from server.api_process.images import ImagesResponse
from server.api_process.images_stream import (
    COMPLETED,
    PARTIAL,
    completed_events,
    error_event,
    partial_events,
    partial_steps,
)
from server.api_process.service import Preview
from tests.unit.server.test_images_api import ROUTE, make_stack, run

openai = pytest.importorskip("openai")
httpx2 = pytest.importorskip("httpx2")
from openai._streaming import SSEDecoder  # noqa: E402
from openai.types import ImageGenStreamEvent  # noqa: E402
from pydantic import TypeAdapter  # noqa: E402

EVENTS = TypeAdapter(ImageGenStreamEvent)  # validated strictly: every field the SDK declares, its literal


def decoded(raw: bytes) -> list:
    """Our bytes through the SDK's SSE decoder, each data validated as the SDK's stream event."""
    return [(e.event, EVENTS.validate_python(e.json())) for e in SSEDecoder().iter_bytes(iter([raw]))]


@pytest.mark.parametrize(
    ("steps", "partials", "want"),
    [
        (4, 0, []),
        (4, 1, [2]),
        (4, 2, [2, 3]),
        (4, 3, [1, 2, 3]),
        (8, 3, [2, 4, 6]),
        (8, 1, [4]),
        (3, 3, [1, 2]),
        (2, 3, [1]),
        (1, 3, []),
    ],
)
def test_partial_steps_spread_over_the_steps_without_the_last(steps, partials, want):
    assert partial_steps(steps, partials) == want


@pytest.mark.parametrize("steps", range(1, 17))
@pytest.mark.parametrize("partials", range(4))
def test_partial_steps_are_distinct_steps_before_the_last_as_many_as_fit(steps, partials):
    got = partial_steps(steps, partials)
    assert got == sorted(set(got)) and all(1 <= k < steps for k in got)
    assert len(got) == min(partials, steps - 1)


def test_partial_events_as_the_sdk_reads_them():
    x = np.linspace(-1, 1, 2 * 64, dtype=np.float32).reshape(2, 1, 8, 8)
    raw = partial_events(Preview(step=2, steps=4, x=x, image=True), 2, "png", None, "8x8")
    got = decoded(raw)
    assert [name for name, _ in got] == [PARTIAL, PARTIAL]
    assert all(isinstance(e, openai.types.ImageGenPartialImageEvent) for _, e in got)
    assert [(e.partial_image_index, e.model_extra["index"], e.model_extra["step"]) for _, e in got] == [
        (0, 0, 2),
        (0, 1, 2),
    ]
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(got[1][1].b64_json))))
    want = np.round((np.clip(x[1, 0], -1, 1) + 1) * 127.5).astype(np.uint8)  # DESIGN.md's PNG rule
    np.testing.assert_array_equal(img, want)
    assert got[0][1].size == "8x8" and got[0][1].output_format == "png"
    assert partial_events(Preview(step=1, steps=4, x=x, image=True), 2, "png", None, "8x8") == b""


def test_completed_events_carry_each_image_and_the_responses_fields():
    body = {
        "created": 1700000000,
        "data": [{"b64_json": f"AAA{i}", "revised_prompt": "c3", "seed": 9, "index": i} for i in range(3)],
        "model": "toy",
        "size": "8x8",
        "output_format": "webp",
        "steps": 2,
        "seed": 9,
        "class_label": 3,
        "guidance_scale": 1.0,
        "sampler": "flowmap",
        "timings": {"queue_ms": 1.0, "compute_ms": 2.0, "total_ms": 3.0},
    }
    got = decoded(completed_events(ImagesResponse.model_validate(body)))
    assert [name for name, _ in got] == [COMPLETED] * 3
    for i, (_, e) in enumerate(got):
        assert isinstance(e, openai.types.ImageGenCompletedEvent)
        assert (e.b64_json, e.created_at, e.output_format, e.size) == (f"AAA{i}", 1700000000, "webp", "8x8")
        assert e.usage.total_tokens == 0
        extra = e.model_extra
        assert (extra["index"], extra["seed"], extra["steps"], extra["timings"]["total_ms"]) == (i, 9, 2, 3.0)


def test_an_error_event_is_raised_by_the_sdk_stream():
    err = {"error": {"message": "engine core stopped", "type": "server_error", "param": None, "code": "x"}}
    raw = completed_events(ImagesResponse.model_construct(created=1, data=[])) + error_event(503, err)
    transport = httpx2.MockTransport(
        lambda request: httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=raw)
    )
    http = httpx2.Client(transport=transport)
    client = openai.OpenAI(base_url="http://t/v1", api_key="k", http_client=http, max_retries=0)
    with pytest.raises(openai.APIError, match="engine core stopped"):
        list(client.images.generate(prompt="c1", stream=True))


# ------------------------------------------------------------------------------- the real SDK, in process
def sdk(stack) -> openai.AsyncOpenAI:
    app = create_app(stack.service, stack.metrics)
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://t")
    return openai.AsyncOpenAI(base_url="http://t/v1", api_key="k", http_client=http, max_retries=0)


async def streamed(client, **kw) -> list:
    return [e async for e in await client.images.generate(prompt="c4", stream=True, **kw)]


@pytest.mark.parametrize(("partials", "steps"), [(None, 3), (0, 3), (1, 4), (2, 4), (3, 4), (3, 2)])
def test_the_sdk_streams_partials_then_the_plain_images(partials, steps):
    stack, extra = make_stack(), {"seed": 5, "steps": steps}

    async def go():
        async with sdk(stack) as client:
            plain = await client.images.generate(prompt="c4", n=3, extra_body=extra)
            kw = {} if partials is None else {"partial_images": partials}
            return plain, await streamed(client, n=3, extra_body=extra, **kw)

    plain, got = run(go())
    chosen = partial_steps(steps, partials or 0)
    assert [e.type for e in got] == [PARTIAL] * 3 * len(chosen) + [COMPLETED] * 3
    partial = [(e.partial_image_index, e.model_extra["step"], e.model_extra["index"]) for e in got[:-3]]
    assert partial == [(j, k, i) for j, k in enumerate(chosen) for i in range(3)]
    assert [e.b64_json for e in got[-3:]] == [d.b64_json for d in plain.data]  # same seed: same images
    assert [e.model_extra["index"] for e in got[-3:]] == [0, 1, 2]
    assert all(e.model_extra["seed"] == 5 and e.model_extra["steps"] == steps for e in got[-3:])
    assert stack.service.inflight == 0


def test_a_failure_mid_stream_is_the_sdks_api_error():
    stack = make_stack()
    core, real_submit = stack.core, stack.core.submit

    def fail_after_first_preview(on_preview):
        def handler(msg):
            on_preview(msg)
            core.fail_all("engine core stopped")

        return handler

    core.submit = lambda make, on_preview=None: real_submit(make, fail_after_first_preview(on_preview))

    async def go():
        async with sdk(stack) as client:
            await streamed(client, partial_images=3, extra_body={"steps": 3})

    with pytest.raises(openai.APIError, match="engine core stopped"):
        run(go())
    assert stack.service.inflight == 0


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"partial_images": 4, "stream": True}, "less than or equal to 3"),
        ({"partial_images": -1, "stream": True}, "greater than or equal to 0"),
        ({"partial_images": "2", "stream": True}, "integer"),
        ({"partial_images": 1.0, "stream": True}, "integer"),
        ({"partial_images": True, "stream": True}, "integer"),
        ({"partial_images": [1], "stream": True}, "integer"),
        ({"partial_images": 2}, "needs stream: true"),
        ({"partial_images": 0, "stream": False}, "needs stream: true"),
    ],
)
def test_bad_partial_images_is_a_400_naming_it(body, words):
    stack = make_stack()
    r = run(stack.client.post(ROUTE, json={"prompt": "c1", **body}))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "partial_images" and words in error["message"], error
    assert error["type"] == "invalid_request_error"
