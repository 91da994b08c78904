"""The engine core's end of the link (server.common.frames): a listening Unix socket and one connection
per API process, all I/O done by `poll` on the core's own thread (no I/O threads).

Frames received wait in `inbox` as (connection id, frame); the core takes them a bounded number per loop
turn, and once RECEIVE_CAP frames wait nothing more is read until it has (the API processes' sends then
back up on their side). A connection whose frame is malformed, whose peer closed it, or whose unsent output
passed OUT_CAP (an API process that stopped reading) is closed: its frames still waiting are dropped and
`on_close(id)` tells the core, which cancels what that connection asked for (the API process fails the
requests it held there). In practice the API's outstanding-request bound keeps output far below OUT_CAP.
"""

from __future__ import annotations

import itertools
import logging
import os
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from server.common.frames import CHUNK, Reader, Writer, pack
from server.common.messages import WireError

log = logging.getLogger("flowmap.server")
RECEIVE_CAP = 4096  # frames waiting in the inbox before the core stops reading
OUT_CAP = 1 << 30  # bytes of unsent output to one API process before its connection is dropped
READS = 16  # recv calls per connection per poll
ACCEPT_PAUSE = 0.1  # seconds the listener rests after accept failed (out of file descriptors)


@dataclass
class Conn:
    id: int
    sock: socket.socket
    reader: Reader = field(default_factory=Reader)
    writer: Writer = field(default_factory=Writer)
    writing: bool = False  # watched for EVENT_WRITE (output waits)


class Listener:
    def __init__(self, path: str, on_close: Callable[[int], None] | None = None):
        if os.path.exists(path):  # a core that died before us left its socket file
            os.unlink(path)
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(128)
        self.sock.setblocking(False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.sock, selectors.EVENT_READ, None)
        self.conns: dict[int, Conn] = {}
        self.inbox: deque[tuple[int, bytes]] = deque()
        self.ids = itertools.count(1)
        self.on_close = on_close
        self.resume_accept = 0.0  # when the listener, paused after a failed accept, listens again

    def poll(self, timeout: float | None) -> None:
        """Wait up to `timeout` seconds (None: until something happens; 0 or less: not at all) for I/O,
        then accept, read and flush what is ready. Returns at once while frames wait in the inbox."""
        if self.inbox:
            timeout = 0
        if self.resume_accept and time.monotonic() >= self.resume_accept:
            self.resume_accept = 0.0
            self.sel.register(self.sock, selectors.EVENT_READ, None)
        for key, events in self.sel.select(timeout):
            if key.data is None:
                self._accept()
                continue
            conn: Conn = key.data
            if events & selectors.EVENT_WRITE and conn.id in self.conns:
                self._flush(conn)
            if events & selectors.EVENT_READ and conn.id in self.conns and len(self.inbox) < RECEIVE_CAP:
                self._read(conn)

    def send(self, cid: int, frame: bytes) -> bool:
        """Queue `frame` to connection `cid` and send what the socket takes now; False when that
        connection is gone (or was dropped now)."""
        conn = self.conns.get(cid)
        if conn is None:
            return False
        try:
            done = conn.writer.write(conn.sock, pack(frame))
        except OSError as e:
            self._close(conn, f"send failed: {e}")
            return False
        if not done:
            if len(conn.writer) > OUT_CAP:
                self._close(conn, f"{len(conn.writer)} bytes unsent (the API process stopped reading)")
                return False
            if not conn.writing:
                self.sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
                conn.writing = True
        return True

    def close(self) -> None:
        self.on_close = None
        for conn in list(self.conns.values()):
            self._close(conn, None)
        if not self.resume_accept:
            self.sel.unregister(self.sock)
        self.sock.close()
        self.sel.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of file descriptors: the API process retries on its next send
                log.warning("engine core: could not accept a connection: %s", e)
                self.sel.unregister(self.sock)  # the listener stays readable: rest, do not spin
                self.resume_accept = time.monotonic() + ACCEPT_PAUSE
                return
            sock.setblocking(False)
            conn = Conn(next(self.ids), sock)
            self.conns[conn.id] = conn
            self.sel.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: Conn) -> None:
        for _ in range(READS):
            try:
                data = conn.sock.recv(CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._close(conn, f"receive failed: {e}")
                return
            if not data:
                self._close(conn, None)
                return
            try:
                frames = conn.reader.feed(data)
            except WireError as e:
                self._close(conn, str(e))
                return
            self.inbox.extend((conn.id, f) for f in frames)
            if len(data) < CHUNK:
                return

    def _flush(self, conn: Conn) -> None:
        try:
            done = conn.writer.flush(conn.sock)
        except OSError as e:
            self._close(conn, f"send failed: {e}")
            return
        if done:
            self.sel.modify(conn.sock, selectors.EVENT_READ, conn)
            conn.writing = False

    def _close(self, conn: Conn, why: str | None) -> None:
        if why:
            log.warning("engine core: dropped an API process's connection: %s", why)
        self.conns.pop(conn.id, None)
        self.sel.unregister(conn.sock)
        conn.sock.close()
        if any(cid == conn.id for cid, _ in self.inbox):  # in place: the core may be reading it now
            keep = [item for item in self.inbox if item[0] != conn.id]
            self.inbox.clear()
            self.inbox.extend(keep)
        if self.on_close is not None:
            self.on_close(conn.id)
