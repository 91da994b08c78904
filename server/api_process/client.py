"""The API side of the engine cores: one DEALER socket per core, futures keyed by request id, and the
supervisor's CoreStates feed. Runs on the API process's event loop; no torch here.

The sockets are plain (non-async) ZeroMQ sockets read from the loop's own reader callback: ZeroMQ
signals its file descriptor edge-triggered, so every callback drains all waiting frames, and every
send schedules one more look (a send can consume the edge a waiting frame raised). This costs a
fraction of zmq.asyncio's per-message future and flag bookkeeping on the latency path.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable

import zmq

from server.common import messages as m
from server.common.estimator import ReportedWait

log = logging.getLogger("flowmap.server")
POLLIN = int(zmq.POLLIN)
EVENTS = int(zmq.EVENTS)


class CoreDown(Exception):
    """The engine core is not connected, or went away with this request in it."""


class LoopSocket:
    """A ZeroMQ socket whose incoming frames go to `on_frame`, called on the event loop."""

    def __init__(self, sock: zmq.Socket, on_frame: Callable[[bytes], None]):
        self.sock, self.on_frame = sock, on_frame
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.sock.getsockopt(zmq.FD), self.drain)
        self.loop.call_soon(self.drain)  # frames that arrived before the reader was registered

    def drain(self) -> None:
        sock = self.sock
        while not sock.closed and sock.getsockopt(EVENTS) & POLLIN:
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self.on_frame(frame)
            except Exception:  # one bad frame must not stop the reader
                log.exception("dropped a frame")

    def send(self, frame: bytes) -> bool:
        """Send now, or False when the peer cannot take it (not connected, or its queue is full)."""
        try:
            self.sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            return False
        if self.loop is not None:
            self.loop.call_soon(self.drain)
        return True

    def close(self) -> None:
        if self.loop is not None and not self.sock.closed:
            self.loop.remove_reader(self.sock.getsockopt(zmq.FD))
        self.sock.close(0)


class CoreClient:
    """Send Generate / Cancel to one core; `submit` returns a future settled with its Done or Failed, and
    hands a streamed request's Preview messages to its `on_preview` as they come."""

    def __init__(self, ctx: zmq.Context, address: str):
        self.ctx, self.address = ctx, address
        self.io = LoopSocket(self._socket(), self._on_frame)
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future] = {}
        self.reported = ReportedWait()  # the core's queue wait, from its last result (Done/Failed.wait_s)
        self.previews: dict[int, Callable[[m.Preview], None]] = {}  # streamed requests still pending

    def _socket(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        # Frames queue while the connection is (re)established: the supervisor reports a core up once it
        # listens, and the connection follows within a reconnect interval. Requests are never sent to
        # a core reported down (Service.check_open), and those held by a core that stops are failed.
        sock.setsockopt(zmq.RECONNECT_IVL, 20)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.connect(self.address)
        return sock

    def start(self) -> None:
        self.io.start()

    def submit(
        self, make: Callable[[int], m.Generate], on_preview: Callable[[m.Preview], None] | None = None
    ) -> tuple[int, asyncio.Future]:
        """(request id, future). Raises CoreDown when the core cannot take messages now."""
        rid = next(self.ids)
        if not self.io.send(m.encode(make(rid))):
            raise CoreDown(f"engine core {self.address}: send queue full ({len(self.pending)} pending)")
        fut = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        if on_preview is not None:
            self.previews[rid] = on_preview
        return rid, fut

    def notify(self, msg) -> None:
        """A message that needs no answer (Shed); dropped when the core cannot take it now."""
        try:
            self.io.send(m.encode(msg))
        except zmq.ZMQError:  # the socket is closing (a reconnect, shutdown): the notice is not needed
            pass

    def cancel(self, rid: int) -> None:
        self.previews.pop(rid, None)
        if self.pending.pop(rid, None) is not None:
            self.io.send(m.encode(m.Cancel(rid)))  # when the core is gone, nothing runs for it any more

    def reconnect(self, reason: str) -> None:
        """The core went away: fail what it held and start a fresh socket, dropping the frames still
        queued for it (a restarted core must not compute requests already answered 503)."""
        self.fail_all(reason)
        self.reported = ReportedWait()
        started = self.io.loop is not None
        self.io.close()
        self.io = LoopSocket(self._socket(), self._on_frame)
        if started:
            self.io.start()

    def fail_all(self, reason: str) -> None:
        """The core went away: every request in it fails now (the API answers 503)."""
        pending, self.pending = self.pending, {}
        self.previews = {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(CoreDown(reason))

    def _on_frame(self, frame: bytes) -> None:
        try:
            msg = m.decode(frame)
        except m.WireError as e:
            log.warning("dropped a frame from %s: %s", self.address, e)
            return
        rid = getattr(msg, "id", -1)
        if isinstance(msg, m.Preview):
            on_preview = self.previews.get(rid)
            if on_preview is not None:
                on_preview(msg)
            return
        if isinstance(msg, m.Done | m.Failed) and msg.sent:  # even a result nobody waits for any more
            self.reported.observe(msg.wait_s, msg.sent)
        self.previews.pop(rid, None)
        fut = self.pending.pop(rid, None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def close(self) -> None:
        self.io.close()


def watch_states(ctx: zmq.Context, address: str, on_states: Callable[[m.CoreStates], None]) -> LoopSocket:
    """Feed every CoreStates the supervisor publishes to `on_states`; returns the started socket."""
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)

    def on_frame(frame: bytes) -> None:
        try:
            msg = m.decode(frame)
        except m.WireError:
            return
        if isinstance(msg, m.CoreStates):
            on_states(msg)

    io = LoopSocket(sock, on_frame)
    io.start()
    return io
