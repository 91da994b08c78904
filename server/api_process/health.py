"""Liveness and readiness, answered where no request work can delay them.

Under load an API process's event loop runs decoding, validation, encoding and the ASGI stack of every
request; a probe routed through FastAPI waits behind all of it (issue 19 measured /healthz p99 at 5.7 s
at 4x overload, past a liveness probe's 5 s timeout: a pod restarted exactly when it is busiest). So the
connection protocol (server.api_process.limits) answers a lone `GET /healthz` or `GET /readyz` as its
bytes arrive, before any parsing, task or middleware, from state the process already holds: liveness is
"this process's event loop answers"; readiness is the cached supervisor view (every core up, not
draining), never a round trip to a core. Readiness does not go false under overload: 429s shed the
excess, and a pod leaving the endpoints would only push its load onto its siblings. The FastAPI routes
(server.api_process.app) answer the same through `probe` for everything else (HEAD, pipelined requests).
"""

from __future__ import annotations

import json

PROBES = (b"/healthz", b"/readyz")


def probe(service, path: str) -> tuple[int, dict]:
    """(status, body) of the probe at `path` (/healthz or /readyz) for this API process's `service`."""
    if path == "/healthz":
        return 200, {"status": "ok"}
    return (200, {"status": "ready"}) if service.ready else (503, {"status": service.state})


def responder(service):
    """path bytes -> (status, JSON body bytes, close): what the connection protocol writes."""

    def answer(path: bytes) -> tuple[int, bytes, bool]:
        status, body = probe(service, path.decode())
        return status, json.dumps(body, separators=(",", ":")).encode(), service.draining

    return answer


def raw_response(status: int, body: bytes, close: bool) -> bytes:
    reason = b"OK" if status == 200 else b"Service Unavailable"
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % (
        status,
        reason,
        len(body),
    )
    return head + (b"connection: close\r\n" if close else b"") + b"\r\n" + body
