"""Server-sent events for the generating JSON routes (`"stream": true` on /v1/generate and on
/v1/images/generations): `text/event-stream` with

- `event: preview`, once per step: `{"step": k, "steps": K, "images": [base64 PNG, ...]}` (image models)
  or `{"step": k, "steps": K, "samples": [[...], ...]}` (others): every sample's jump to data X_{s,0}
  after step k, which the step computes anyway (server.core_process.engine_core.Executor._preview);
- `event: result`, last: exactly the body the same request gets without `stream` (same seed, same
  samples);
- `event: error` instead of `result` when the request fails after its first event: `{"status": S, ...}`
  with the protocol's error body.

Errors found before the first event (bad input, unknown model, queue full, a deadline passed while
queued) are plain HTTP errors, as without `stream`. A client that goes away ends the request: the
engine core drops its rows at the next step boundary.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import StreamingResponse

from server.api_process import http
from server.api_process.encode import png_images
from server.api_process.service import ClientGone, GenParams, GenResult, Preview, Service, ServiceError

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of the events
OPENAPI = {  # the streamed 200, as /openapi.json declares it beside the JSON body
    200: {
        "description": "The result as JSON; with `stream`: preview events, then `result` (or `error`).",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


def event(name: str, data: str) -> bytes:
    """One SSE event; `data` is one line of JSON."""
    return f"event: {name}\ndata: {data}\n\n".encode()


def preview_event(v: Preview) -> bytes:
    """Image models: one PNG per sample (the small, lossless, cheapest encoder); others: the floats."""
    body = {"step": v.step, "steps": v.steps}
    if v.image:
        body["images"] = png_images(v.x)
    else:
        body["samples"] = v.x.tolist()
    return event("preview", json.dumps(body, separators=(",", ":")))


async def respond(
    service: Service, p: GenParams, request: Request, encode: Callable[[GenResult], str], t0: float
) -> StreamingResponse:
    """Start the request; answer an event stream once its first preview is in (raise ServiceError, a plain
    HTTP error, when it fails before that)."""
    queue: asyncio.Queue = asyncio.Queue()  # Preview, ..., then the finished task itself
    task = asyncio.ensure_future(service.generate(p, lambda: http.wait_disconnect(request), queue.put_nowait))
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
    stream = _events(service, p, request, encode, t0, first, queue, task)
    return StreamingResponse(stream, media_type="text/event-stream", headers=HEADERS)


async def _events(service, p, request, encode, t0, item, queue, task) -> AsyncIterator[bytes]:
    """The previews as they come, then the result (or error); a client gone cancels the request."""
    try:
        while item is not task:
            yield preview_event(item)
            item = await queue.get()
        yield _last(service, p, request, encode, t0, task)
    finally:
        if not task.done():  # the client went away mid-stream (Starlette cancelled this generator)
            task.cancel()
            _gone(service, p, request, t0)


def _last(service, p, request, encode, t0, task) -> bytes:
    e = task.exception()
    if e is None:
        return event("result", http.finish(service, task.result(), encode, t0))
    if not isinstance(e, ServiceError):
        e = ServiceError(f"internal error: {type(e).__name__}")
    if isinstance(e, ClientGone):
        _gone(service, p, request, t0)
        return b""
    http.failed(service, request, e, p.model, p.steps, t0)
    service.reject(e.reason, p.model)
    status, body = http.error_payload(request, e)
    return event("error", json.dumps({"status": status, **body}, separators=(",", ":")))


def _gone(service: Service, p: GenParams, request: Request, t0: float) -> None:
    """Record a stream whose client left before its result (499, as a non-streamed request)."""
    e = ClientGone("client disconnected")
    http.failed(service, request, e, p.model, p.steps, t0)
    service.reject(e.reason, p.model)
