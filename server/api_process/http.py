"""What every route that generates shares: the one generate call (disconnect wait, timing, recording),
the API key, the body limit, and error formatting per protocol (v1: FastAPI's {"detail"}; v2: {"error"},
400 for bad input; OpenAI: {"error": {message, type, param, code}}, 400 for bad input). Routes live in
server.api_process.app (v1, health), server.api_process.v2 (Open Inference Protocol) and
server.api_process.images (OpenAI's images API).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable
from typing import TypeVar

from fastapi import Depends, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from server.api_process.protocol import OPENAI, V2, error_body, protocol, status_for
from server.api_process.service import GenParams, GenResult, Service, ServiceError, Unauthorized

T = TypeVar("T")


async def wait_disconnect(request: Request) -> None:
    """Returns when the client has gone (the body is already read, so receive() waits for the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def generate(
    service: Service,
    p: GenParams,
    request: Request,
    encode: Callable[[GenResult], T],
    t0: float | None = None,
) -> T:
    """service.generate with the client's disconnect watched, then `encode` (timings["total_ms"] is set
    before it runs, so it may include it); recorded once, with the status sent. `t0`: when the request's
    decoding began (default: now)."""
    t0 = time.monotonic() if t0 is None else t0
    try:
        r = await service.generate(p, lambda: wait_disconnect(request))
    except ServiceError as e:
        failed(service, request, e, p.model, p.steps, t0)
        raise
    return finish(service, r, encode, t0)


def finish(service: Service, r: GenResult, encode: Callable[[GenResult], T], t0: float) -> T:
    """A generated result encoded (timings["total_ms"] set first) and recorded as answered 200."""
    r.timings["total_ms"] = 1e3 * (time.monotonic() - t0)
    out = encode(r)
    service.returned(r)
    service.record(r.model, r.steps, 200, time.monotonic() - t0, r.timings["queue_ms"] / 1e3)
    return out


def failed(service: Service, request: Request, e: ServiceError, model: str | None, steps, t0: float) -> None:
    """Record a request that failed with `e` (the status as its protocol sends it)."""
    e.model = model
    status = status_for(e.status, protocol(request.url.path))
    service.record(model or service.default_model, steps, status, time.monotonic() - t0, None)


def error_response(request: Request, e: ServiceError) -> Response:
    if e.status == 499:
        return Response(status_code=499)
    headers = {}
    if e.retry_after is not None:
        headers["Retry-After"] = str(int(max(1, round(e.retry_after))))
    if e.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    status, body = error_payload(request, e)
    return JSONResponse(body, status, headers=headers if status != 422 else None)


def error_payload(request: Request, e: ServiceError) -> tuple[int, dict]:
    """(status as sent, body) of `e` in the protocol of the request's path."""
    proto = protocol(request.url.path)
    if proto in (V2, OPENAI):
        status = status_for(e.status, proto)
        return status, error_body(proto, status, str(e), e.field, e.reason)
    if e.status == 422:
        loc = ["body", *(e.field or "body").split(".")]  # "steer.reward" -> ["body", "steer", "reward"]
        return 422, {"detail": [{"loc": loc, "msg": str(e), "type": "value_error"}]}
    return e.status, {"detail": str(e)}


def make_auth(service: Service) -> list:
    """The route dependencies: 401 unless the API key (X-API-Key or Bearer) matches; none without a key
    (so /openapi.json declares no security and requests skip dependency resolution)."""
    header, bearer = APIKeyHeader(name="X-API-Key", auto_error=False), HTTPBearer(auto_error=False)

    async def auth(
        key: str | None = Depends(header), cred: HTTPAuthorizationCredentials | None = Depends(bearer)
    ):
        expected = service.settings.key()
        got = key or (cred.credentials if cred else None)
        if not got or not hmac.compare_digest(got.encode(), expected.encode()):
            raise Unauthorized("missing or wrong API key")

    return [Depends(auth)] if service.settings.key() is not None else []


class BodyLimit:
    """ASGI middleware: 413 for bodies over `max_bytes` (Content-Length or counted) and 408 for a body
    that does not arrive within `timeout` seconds, both before any parsing."""

    def __init__(self, app, max_bytes: int, timeout: float = 30.0, on_reject=None):
        self.app, self.max_bytes, self.timeout, self.on_reject = app, max_bytes, timeout, on_reject

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._reject(scope, receive, send, 413, "too_large")
        try:
            body = await asyncio.wait_for(self._read(receive), self.timeout)
        except asyncio.TimeoutError:
            return await self._reject(scope, receive, send, 408, "timeout")
        if body is None:
            return None
        if len(body) > self.max_bytes:
            return await self._reject(scope, receive, send, 413, "too_large")
        return await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive) -> bytes | None:
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return None
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                break
            more = msg.get("more_body", False)
        return b"".join(chunks)

    async def _reject(self, scope, receive, send, status: int, reason: str):
        if self.on_reject:
            self.on_reject(reason)
        detail = (
            f"request body larger than {self.max_bytes} bytes"
            if status == 413
            else f"request body not received within {self.timeout:g} s"
        )
        body = error_body(protocol(scope["path"]), status, detail, code=reason)
        await JSONResponse(body, status, headers={"Connection": "close"})(scope, receive, send)


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # afterwards: wait for http.disconnect

    return replay


class CloseWhenDraining:
    """ASGI middleware: while the service drains, every response says `Connection: close`, so clients stop
    reusing connections that are about to go (instead of racing a request against the close)."""

    def __init__(self, app, service: Service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_closing(msg):
            if msg["type"] == "http.response.start" and self.service.draining:
                msg = {**msg, "headers": [*msg.get("headers", []), (b"connection", b"close")]}
            await send(msg)

        return await self.app(scope, receive, send_closing)
