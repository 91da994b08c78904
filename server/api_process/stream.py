"""Server-sent events for the generating JSON routes (`"stream": true`): the one streaming path (start,
previews as they come, the result or an error, a client gone), written by each route's `Codec`. v1's
codec (`v1_codec`) answers `text/event-stream` with

- `event: preview`, once per step: `{"step": k, "steps": K, "images": [base64 PNG, ...]}` (image models)
  or `{"step": k, "steps": K, "samples": [[...], ...]}` (others): every sample's jump to data X_{s,0}
  after step k, which the step computes anyway (server.core_process.engine_core.Executor._preview);
- `event: result`, last: exactly the body the same request gets without `stream` (same seed, same
  samples);
- `event: error` instead of `result` when the request fails after its first event: `{"status": S, ...}`
  with the protocol's error body.

OpenAI's images route writes OpenAI's image events instead (server.api_process.images_stream).

Errors found before the first event (bad input, unknown model, queue full, a deadline passed while
queued) are plain HTTP errors, as without `stream`. A client that goes away ends the request: the
engine core drops its rows at the next step boundary.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import StreamingResponse

from server.api_process import http
from server.api_process.encode import png_images
from server.api_process.service import ClientGone, GenParams, GenResult, Preview, Service, ServiceError

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of the events


def openapi(events: str) -> dict:
    """The streamed 200, as /openapi.json declares it beside the JSON body (`events`: what `stream` sends)."""
    description = f"The result as JSON; with `stream`: {events}."
    # Open API 3.1 (FastAPI's): an event stream's `schema` describes one event (3.2 would say itemSchema)
    one_event = {
        "type": "object",
        "description": "One server-sent event: `event` names it, `data` is one line of JSON.",
        "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
        "required": ["data"],
    }
    content = {"text/event-stream": {"schema": one_event}}
    return {200: {"description": description, "content": content}}


OPENAPI = openapi("preview events, then `result` (or `error`)")


def event(name: str, data: str) -> bytes:
    """One SSE event; `data` is one line of JSON."""
    return f"event: {name}\ndata: {data}\n\n".encode()


def json_line(body: dict) -> str:
    return json.dumps(body, separators=(",", ":"))


@dataclass(frozen=True)
class Codec:
    """How a route writes its stream: `preview` (b"": nothing sent for that step), `result` (the finished
    request), `error` (status as sent, the protocol's error body); `previews`: False asks the core for
    none."""

    preview: Callable[[Preview], bytes]
    result: Callable[[GenResult], bytes]
    error: Callable[[int, dict], bytes]
    previews: bool = True


def v1_codec(encode: Callable[[GenResult], str]) -> Codec:
    """v1's events: `preview` per step, then `result` (the plain body, `encode`d) or `error`."""
    return Codec(
        preview=preview_event,
        result=lambda r: event("result", encode(r)),
        error=lambda status, body: event("error", json_line({"status": status, **body})),
    )


def preview_event(v: Preview) -> bytes:
    """Image models: one PNG per sample (the small, lossless, cheapest encoder); others: the floats."""
    body = {"step": v.step, "steps": v.steps}
    if v.image:
        body["images"] = png_images(v.x)
    else:
        body["samples"] = v.x.tolist()
    return event("preview", json_line(body))


async def respond(
    service: Service, p: GenParams, request: Request, codec: Codec, t0: float
) -> StreamingResponse:
    """Start the request; answer an event stream once its first preview (or, asking none, its result) is in
    (raise ServiceError, a plain HTTP error, when it fails before that)."""
    queue: asyncio.Queue = asyncio.Queue()  # Preview, ..., then the finished task itself
    on_preview = queue.put_nowait if codec.previews else None
    task = asyncio.ensure_future(service.generate(p, lambda: http.wait_disconnect(request), on_preview))
    task.add_done_callback(queue.put_nowait)
    try:
        first = await queue.get()
    except asyncio.CancelledError:
        task.cancel()
        raise
    if first is task and task.exception() is not None:  # failed before its first step: a plain error
        if isinstance(task.exception(), ServiceError):
            http.failed(service, request, task.exception(), p.model, p.steps, t0)
        raise task.exception()
    ended = [False]  # the request's outcome is answered or recorded (once, by whichever sees it first)

    def gone() -> None:
        """The response is over: unless its outcome went out, the client left: cancel and record (499)."""
        if ended[0]:
            return
        ended[0] = True
        if not task.done():
            task.cancel()
        elif not task.cancelled():
            task.exception()  # retrieved: the client never sees it
        _gone(service, p, request, t0)

    stream = _events(service, p, request, codec, t0, first, queue, task, ended, gone)
    return _Stream(stream, gone, media_type="text/event-stream", headers=HEADERS)


class _Stream(StreamingResponse):
    """A StreamingResponse that calls `on_close` however it ends. The generator's own `finally` is not
    enough: a client that leaves before Starlette first iterates it (a disconnect while the response
    starts) never runs it, and the request would run on, unrecorded."""

    def __init__(self, content, on_close: Callable[[], None], **kw):
        super().__init__(content, **kw)
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


async def _events(service, p, request, codec, t0, item, queue, task, ended, gone) -> AsyncIterator[bytes]:
    """The previews as they come, then the result (or error); a client gone cancels the request."""
    try:
        while item is not task:
            if data := codec.preview(item):
                yield data
            item = await queue.get()
        last = _last(service, p, request, codec, t0, task)
        ended[0] = True
        yield last
    finally:
        gone()  # the client went away mid-stream (Starlette cancelled this generator); else a no-op


def _last(service, p, request, codec, t0, task) -> bytes:
    e = task.exception()
    if e is None:
        return http.finish(service, task.result(), codec.result, t0)
    if not isinstance(e, ServiceError):
        e = ServiceError(f"internal error: {type(e).__name__}")
    if isinstance(e, ClientGone):
        _gone(service, p, request, t0)
        return b""
    http.failed(service, request, e, p.model, p.steps, t0)
    service.reject(e.reason, p.model)
    status, body = http.error_payload(request, e)
    return codec.error(status, body)


def _gone(service: Service, p: GenParams, request: Request, t0: float) -> None:
    """Record a stream whose client left before its result (499, as a non-streamed request)."""
    e = ClientGone("client disconnected")
    http.failed(service, request, e, p.model, p.steps, t0)
    service.reject(e.reason, p.model)
