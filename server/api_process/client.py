"""The API side of the engine cores: one Unix-socket connection per core (server.common.frames),
futures keyed by request id, and the supervisor's CoreStates feed. Runs on the API process's event loop;
no torch here.

A core's connection is a plain non-blocking socket watched by the loop's own reader (and, while output
waits, writer) callbacks: a frame is sent at once from the request's own turn of the loop, and the reply
wakes the loop directly. The CoreStates feed is a ZeroMQ SUB socket, read the same way: ZeroMQ signals
its file descriptor edge-triggered, so every callback drains all waiting frames.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from collections.abc import Callable

import zmq

from server.common import messages as m
from server.common.estimator import ReportedWait
from server.common.frames import CHUNK, Reader, Writer, pack

log = logging.getLogger("flowmap.server")
OUT_CAP = 64 << 20  # bytes of frames waiting for a core's socket before sends are refused (503)
POLLIN = int(zmq.POLLIN)
EVENTS = int(zmq.EVENTS)


class CoreDown(Exception):
    """The engine core is not connected, or went away with this request in it."""


class LoopSocket:
    """A receiving ZeroMQ socket (the CoreStates feed) whose frames go to `on_frame`, on the event loop."""

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

    def close(self) -> None:
        if self.loop is not None and not self.sock.closed:
            self.loop.remove_reader(self.sock.getsockopt(zmq.FD))
        self.sock.close(0)


class CoreLink:
    """This API process's connection to one engine core: frames sent at once (what the socket cannot take
    now waits, in order, for the loop's writer callback), frames received handed to `on_frame` on the
    loop. It connects on the first send after start or after a loss (a core is only sent to once the
    supervisor reports it up), and `on_lost` hears when the core closes it (stopped or restarted)."""

    def __init__(self, path: str, on_frame: Callable[[bytes], None], on_lost: Callable[[str], None]):
        self.path, self.on_frame, self.on_lost = path, on_frame, on_lost
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sock: socket.socket | None = None
        self.reader, self.writer = Reader(), Writer()
        self.writing = False

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()

    def send(self, frame: bytes) -> bool:
        """Send now, or False when the core cannot take it (not listening, or OUT_CAP bytes wait)."""
        if self.sock is None and not self._connect():
            return False
        if len(self.writer) > OUT_CAP:
            return False
        try:
            done = self.writer.write(self.sock, pack(frame))
        except OSError as e:
            self._send_failed(e)
            return False
        if not done and not self.writing and self.loop is not None:
            self.loop.add_writer(self.sock.fileno(), self._flush)
            self.writing = True
        return True

    def close(self) -> None:
        if self.sock is None:
            return
        if self.loop is not None:
            self.loop.remove_reader(self.sock.fileno())
            if self.writing:
                self.loop.remove_writer(self.sock.fileno())
        self.writing = False
        self.sock.close()
        self.sock, self.reader, self.writer = None, Reader(), Writer()

    def _connect(self) -> bool:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(self.path)
        except OSError as e:  # not listening (any more), or its backlog is full: the caller answers 503
            sock.close()
            self.on_lost(f"cannot connect: {e.strerror or e}")
            return False
        self.sock = sock
        if self.loop is not None:
            self.loop.add_reader(sock.fileno(), self._readable)
        return True

    def _readable(self) -> None:
        try:
            data = self.sock.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._lose(f"receive failed: {e}")
            return
        why = self._deliver(data) if data else "the engine core closed the connection"
        if why is not None:
            self._lose(why)

    def _deliver(self, data: bytes) -> str | None:
        """Hand the frames `data` completes to on_frame; why the stream is unusable, or None."""
        try:
            frames = self.reader.feed(data)
        except m.WireError as e:
            return str(e)
        for frame in frames:
            try:
                self.on_frame(frame)
            except Exception:  # one bad frame must not stop the reader
                log.exception("dropped a frame")
        return None

    def _send_failed(self, e: OSError) -> None:
        """A send failed because the core is gone. What it sent before it went (results of requests it
        finished) is still to be read: read to the end, then lose the connection."""
        while self.sock is not None:
            try:
                data = self.sock.recv(CHUNK)
            except OSError:  # nothing more (BlockingIOError), or a reset
                break
            if not data or self._deliver(data) is not None:
                break
        self._lose(f"send failed: {e}")

    def _flush(self) -> None:
        try:
            done = self.writer.flush(self.sock)
        except OSError as e:
            self._send_failed(e)
            return
        if done:
            self.loop.remove_writer(self.sock.fileno())
            self.writing = False

    def _lose(self, why: str) -> None:
        self.close()
        self.on_lost(why)


class CoreClient:
    """Send Generate / Cancel to one core; `submit` returns a future settled with its Done or Failed, and
    hands a streamed request's Preview messages to its `on_preview` as they come."""

    def __init__(self, path: str):
        self.address = path
        self.io = CoreLink(path, self._on_frame, self._link_lost)
        self.on_lost: Callable[[], None] | None = None  # told when the core closes the connection
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future] = {}
        self.reported = ReportedWait()  # the core's queue wait, from its last result (Done/Failed.wait_s)
        self.previews: dict[int, Callable[[m.Preview], None]] = {}  # streamed requests still pending

    def start(self) -> None:
        self.io.start()

    def submit(
        self, make: Callable[[int], m.Generate], on_preview: Callable[[m.Preview], None] | None = None
    ) -> tuple[int, asyncio.Future]:
        """(request id, future). Raises CoreDown when the core cannot take messages now."""
        rid = next(self.ids)
        if not self.io.send(m.encode(make(rid))):
            raise CoreDown("the engine core cannot take requests now (stopped, or its send queue is full)")
        fut = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        if on_preview is not None:
            self.previews[rid] = on_preview
        return rid, fut

    def notify(self, msg) -> None:
        """A message that needs no answer (Shed); dropped when the core cannot take it now."""
        self.io.send(m.encode(msg))

    def cancel(self, rid: int) -> None:
        self.previews.pop(rid, None)
        if self.pending.pop(rid, None) is not None:
            # when the core is gone, nothing runs for it any more; `sent` times the rows' release (metrics)
            self.io.send(m.encode(m.Cancel(rid, time.monotonic())))

    def reconnect(self, reason: str) -> None:
        """The core went away (the supervisor says so): fail what it held and close the connection,
        dropping the frames still queued for it (a restarted core must not compute requests already
        answered 503); the next send connects to its successor."""
        self.io.close()
        self._lost(reason)

    def _lost(self, reason: str) -> None:
        """The connection is gone (closed by the core, or above): nothing in it can be answered now."""
        self.fail_all(reason)
        self.reported = ReportedWait()

    def _link_lost(self, why: str) -> None:
        """The core closed the connection (it stopped, most likely, before the supervisor could say so)."""
        self._lost(f"the engine core stopped with this request in it ({why})")
        if self.on_lost is not None:
            self.on_lost()

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
