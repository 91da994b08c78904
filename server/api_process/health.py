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

That still runs on the event loop: a flood of the API process itself (thousands of requests a second)
delays every turn of it, probes included. With `--health-port`, `serve_probes` answers on a port of
their own from a thread, which needs only the GIL (Python hands it over every few milliseconds), not a
turn of the loop; its liveness is then "the event loop turned within STALL_S", so a loop that is
busy still passes and one that is stuck fails.
"""

from __future__ import annotations

import json
import socket
import threading
import time

STALL_S = 10.0  # seconds without a turn of the event loop after which /healthz on the probe port fails
REASONS = {200: b"OK", 404: b"Not Found", 405: b"Method Not Allowed", 503: b"Service Unavailable"}

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
    reason = REASONS.get(status, b"Error")
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % (
        status,
        reason,
        len(body),
    )
    return head + (b"connection: close\r\n" if close else b"") + b"\r\n" + body


def probe_port_answer(service, request_line: bytes, beat: float, now: float) -> tuple[int, dict]:
    """(status, body) for one request line on the probe port; `beat`: when the event loop last turned."""
    parts = request_line.split()
    if len(parts) < 2 or parts[0] not in (b"GET", b"HEAD"):
        return 405, {"status": "only GET /healthz and /readyz here"}
    path = parts[1].split(b"?", 1)[0]
    if path == b"/healthz" and now - beat > STALL_S:
        return 503, {"status": f"event loop stalled for {now - beat:.0f} s"}
    if path in PROBES:
        return probe(service, path.decode())
    return 404, {"status": "only /healthz and /readyz here"}


def serve_probes(sock: socket.socket, service, beat: list[float], timeout: float = 1.0) -> threading.Thread:
    """Answer probes on listening socket `sock` from a daemon thread, one connection at a time (probes
    are few; each gets at most `timeout` seconds to send its request line); `beat[0]` is refreshed by the
    event loop (api_process.process). Returns the thread."""

    def handle(conn: socket.socket) -> None:
        data, deadline = b"", time.monotonic() + timeout  # one deadline for the whole request line: a
        while b"\r\n" not in data and len(data) < 4096:  # client trickling bytes holds the thread no longer
            left = deadline - time.monotonic()
            if left <= 0:
                return
            conn.settimeout(left)
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        status, body = probe_port_answer(service, data.split(b"\r\n", 1)[0], beat[0], time.monotonic())
        conn.sendall(raw_response(status, json.dumps(body, separators=(",", ":")).encode(), close=True))

    def loop() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:  # the socket closed: the process is exiting
                return
            try:
                handle(conn)
            except OSError:  # a client that left or stalled: the next probe is answered anyway
                pass
            finally:
                conn.close()

    t = threading.Thread(target=loop, name="flowmap-probes", daemon=True)
    t.start()
    return t
