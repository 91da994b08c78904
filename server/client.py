"""The API side of the engine cores: one DEALER socket per core, futures keyed by request id, and the
supervisor's CoreStates feed. Runs on the API process's event loop (zmq.asyncio); no torch here.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable

import zmq
import zmq.asyncio

from server import messages as m

log = logging.getLogger("flowmap.server")


class CoreDown(Exception):
    """The engine core is not connected, or went away with this request in it."""


class CoreClient:
    """Send Generate / Cancel to one core; `submit` returns a future settled with its Done or Failed."""

    def __init__(self, ctx: zmq.asyncio.Context, address: str):
        self.address = address
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)  # no queueing towards a core that is not connected
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.sock.connect(address)
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future] = {}
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._read())

    def submit(self, make: Callable[[int], m.Generate]) -> tuple[int, asyncio.Future]:
        """(request id, future). Raises CoreDown when the core cannot take messages now."""
        rid = next(self.ids)
        if not self._send(m.encode(make(rid))):
            raise CoreDown(f"engine core {self.address} is not connected")
        fut = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        return rid, fut

    def cancel(self, rid: int) -> None:
        if self.pending.pop(rid, None) is not None:
            self._send(m.encode(m.Cancel(rid)))  # when the core is gone, nothing runs for it any more

    def _send(self, frame: bytes) -> bool:
        """Send now or report False (with NOBLOCK, pyzmq settles the future at once)."""
        f = self.sock.send(frame, zmq.NOBLOCK)
        if not f.done():  # another send is queued: it goes out when the socket can take it
            return True
        return f.exception() is None

    def fail_all(self, reason: str) -> None:
        """The core went away: every request in it fails now (the API answers 503)."""
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(CoreDown(reason))

    async def _read(self) -> None:
        while True:
            try:
                frame = await self.sock.recv()
                msg = m.decode(frame)
            except m.WireError as e:
                log.warning("dropped a frame from %s: %s", self.address, e)
                continue
            except (asyncio.CancelledError, zmq.ContextTerminated):
                return
            fut = self.pending.pop(getattr(msg, "id", -1), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.sock.close(0)


async def watch_states(ctx: zmq.asyncio.Context, address: str, on_states: Callable[[m.CoreStates], None]):
    """Feed every CoreStates the supervisor publishes to `on_states` (runs until cancelled)."""
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    try:
        while True:
            try:
                msg = m.decode(await sock.recv())
            except m.WireError:
                continue
            if isinstance(msg, m.CoreStates):
                on_states(msg)
    finally:
        sock.close(0)
