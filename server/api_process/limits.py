"""Connection limits uvicorn does not have: a cap on open connections per API process, a deadline for a
request's headers and a cap on their size (slow, half-sent or endless requests would otherwise hold a
socket and memory: httptools buffers a header line without limit, 600 MB in a second on loopback).

`guarded_http(max_connections, header_timeout)` returns an HTTP protocol class for uvicorn.Config(http=...).
The header deadline runs from the connection (first request) or from the first byte of the next request
(keep-alive). The body has its own deadline and size limit (server.api_process.http.BodyLimit); idle
keep-alive connections close after uvicorn's `timeout_keep_alive`.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.api_process.health import PROBES, raw_response

MAX_HEADER_BYTES = 64 * 1024  # request line and headers of one request; more gets 431 and a close
RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


class GuardedHttpTools(HttpToolsProtocol):
    """HttpToolsProtocol that refuses connections over the cap, closes those whose headers are late, and
    answers 431 to headers over `max_header_bytes`."""

    max_connections = 1024
    header_timeout = 10.0
    max_header_bytes = MAX_HEADER_BYTES
    health: Callable[[bytes], tuple[int, bytes, bool]] | None = None  # probe path -> (status, body, close)

    def connection_made(self, transport: asyncio.Transport) -> None:
        if len(self.connections) >= self.max_connections:
            sock = transport.get_extra_info("socket")
            if sock is not None:  # a reset, whether or not the client's first bytes are in yet (a plain
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)  # close would be a FIN then)
            transport.abort()  # over the cap: refused before it costs anything
            return
        super().connection_made(transport)
        self._header_bytes: int | None = 0  # bytes received while a request's headers are not in; None: in
        self._header_timer: asyncio.TimerHandle | None = None
        self._start_header_timer()  # the first request's headers: from the connection on
        self._probes_only = self.health is not None  # every request so far was a probe answered here

    def data_received(self, data: bytes) -> None:
        if self._probes_only:
            if self._answer_probe(data):
                return
            self._probes_only = False  # from now on the parser's: it must see the stream from here
        if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._start_header_timer()  # a kept-alive connection's next request: from its first byte on
        if self._header_bytes is not None:
            self._header_bytes += len(data)
        super().data_received(data)
        # still in the headers after this read, and over the cap (a keep-alive connection's next request is
        # counted from the read after the one it began in: at most one read more)
        if (
            self._header_bytes is not None
            and self._header_bytes > self.max_header_bytes
            and not self.transport.is_closing()
        ):
            self._headers_too_large()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_bytes is None:  # a request after one whose headers were in: count from the next read
            self._header_bytes = 0

    def on_headers_complete(self) -> None:
        self._stop_header_timer()
        self._header_bytes = None
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._stop_header_timer()
        if getattr(self, "transport", None) is not None:
            super().connection_lost(exc)

    def _answer_probe(self, data: bytes) -> bool:
        """Answer `data` when it is exactly one complete `GET /healthz` or `GET /readyz` (the kubelet's
        probe: one read, a fresh connection), before the parser or the event loop's other work."""
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep or rest or not data.startswith(b"GET /"):
            return False
        line, _, headers = head.partition(b"\r\n")
        parts = line.split(b" ")
        lower = headers.lower()
        if len(parts) != 3 or parts[1] not in PROBES or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
            return False
        if b"content-length:" in lower or b"transfer-encoding:" in lower:
            return False
        status, body, close = self.health(parts[1])
        close = close or parts[2] == b"HTTP/1.0" or b"connection: close" in lower
        self._stop_header_timer()
        self._unset_keepalive_if_required()
        self.transport.write(raw_response(status, body, close))
        self.server_state.total_requests += 1
        if close:
            self.transport.close()
        else:  # kept alive as uvicorn keeps its own responses' connections
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )
        return True

    # An idle kept-alive connection is uvicorn's: it closes after timeout_keep_alive (--keep-alive).
    def _start_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()

    def _headers_too_large(self) -> None:
        if self.cycle is None or self.cycle.response_complete:  # no response of an earlier request pending
            msg = f"request headers larger than {self.max_header_bytes} bytes".encode()
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(msg), msg)
            )
        self.transport.close()


def guarded_http(max_connections: int, header_timeout: float, health=None) -> type:
    """The protocol class for uvicorn.Config(http=...) with these limits; `health` (health.responder)
    answers probes on the connection itself."""
    limits = {
        "max_connections": max_connections,
        "header_timeout": header_timeout,
        "health": staticmethod(health),
    }
    return type("GuardedHttpTools", (GuardedHttpTools,), limits)
