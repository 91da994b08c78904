"""Connection limits uvicorn does not have: a cap on open connections per API process and a deadline for
a request's headers (slow or half-sent requests would otherwise hold a socket and memory forever).

`guarded_http(max_connections, header_timeout)` returns an HTTP protocol class for uvicorn.Config(http=...).
The body has its own deadline (server.http.BodyLimit); idle keep-alive connections close after
uvicorn's `timeout_keep_alive`.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class GuardedHttpTools(HttpToolsProtocol):
    """HttpToolsProtocol that refuses connections over the cap and closes those whose headers are late."""

    max_connections = 1024
    header_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:
        if len(self.connections) >= self.max_connections:
            transport.abort()  # over the cap: refused before it costs anything
            return
        super().connection_made(transport)
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def on_headers_complete(self) -> None:
        self._header_timer.cancel()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():  # the next request's headers get their own deadline
            self._header_timer.cancel()
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def connection_lost(self, exc: Exception | None) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
        if getattr(self, "transport", None) is not None:
            super().connection_lost(exc)

    def _headers_late(self) -> None:
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()


def guarded_http(max_connections: int, header_timeout: float) -> type:
    """The protocol class for uvicorn.Config(http=...) with these limits."""
    limits = {"max_connections": max_connections, "header_timeout": header_timeout}
    return type("GuardedHttpTools", (GuardedHttpTools,), limits)
