"""One HTTP front-end process: FastAPI on a listening socket inherited from the supervisor, talking to the
engine cores over Unix sockets (server.common.frames). It decodes, validates and encodes; it never
imports torch.

`python -m server.api_process --fd N --dir D --settings JSON` (started by the supervisor; the API key,
when set, arrives as FLOWMAP_API_KEY in the environment, never on the command line).
SIGTERM drains: readiness fails at once, new requests get 503, accepted ones finish (up to the drain
timeout), then the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import time

import uvicorn
import zmq

from server.api_process.client import CoreClient, watch_states
from server.api_process.health import responder, serve_probes
from server.api_process.limits import guarded_http
from server.common.frames import core_path
from server.common.heap import freeze_startup_heap
from server.common.settings import ServerSettings

log = logging.getLogger("flowmap.server")
DRAIN_LINGER = 1.0  # seconds of 503s after the last accepted request finished, before the socket closes


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM/SIGINT starts a drain instead of closing the sockets at once."""

    def __init__(self, config: uvicorn.Config, service, drain_timeout: float):
        super().__init__(config)
        self.service, self.drain_timeout = service, drain_timeout
        self.draining = False
        self.loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets=None) -> None:
        self.loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # the loop's own handlers (uvloop-safe)
            self.loop.add_signal_handler(sig, self.handle_exit, sig, None)
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame) -> None:
        if self.draining or self.loop is None:
            self.force_exit = self.draining and sig == signal.SIGINT
            self.should_exit = True
            return
        self.draining = True
        self.service.begin_drain()
        log.info(
            "draining (%d requests in flight, timeout %.0f s)", self.service.inflight, self.drain_timeout
        )
        self.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain()))

    async def _drain(self) -> None:
        start = time.monotonic()
        ok = await self.service.drained(self.drain_timeout)
        if not ok:  # answer them (503) rather than let the shutdown cut them off without a response
            log.warning("drain timeout: %d requests still in flight", self.service.inflight)
            self.service.fail_pending("the server shut down before this request finished")
            await asyncio.sleep(0.1)
        else:  # keep answering 503 (Connection: close) a moment longer: a client that reconnects right
            # after its last response must meet a 503, not a listening socket closing under it
            await asyncio.sleep(min(DRAIN_LINGER, max(0.0, self.drain_timeout - (time.monotonic() - start))))
        self.should_exit = True


def build(settings: ServerSettings, run_dir: str):
    """(app, service) of one API process: a CoreClient per model, the CoreStates feed, metrics."""
    from server.api_process.app import create_app
    from server.api_process.service import Service
    from server.common.metrics import Metrics

    ctx = zmq.Context()
    clients = [CoreClient(core_path(run_dir, i)) for i in range(len(settings.models))]
    metrics = Metrics()
    service = Service(settings, clients, metrics)
    feeds = []

    async def start():
        for c in clients:
            c.start()
        feeds.append(watch_states(ctx, f"ipc://{run_dir}/state", service.on_states))
        freeze_startup_heap()  # last: everything the app and its clients built lives as long as we do

    async def stop():
        for io in feeds:
            io.close()
        for c in clients:
            c.close()

    return create_app(service, metrics, (start, stop)), service


async def watch_parent(server: uvicorn.Server, parent: int) -> None:
    """Exit when the supervisor is gone (the process must never outlive the server it belongs to)."""
    while not server.should_exit:
        await asyncio.sleep(1.0)
        if os.getppid() != parent:
            log.warning("supervisor gone; exiting")
            server.should_exit = True


async def heartbeat(server: uvicorn.Server, beat: list[float]) -> None:
    """Mark every turn of the event loop (a few per second) for the probe port's liveness (health.py)."""
    while not server.should_exit:
        beat[0] = time.monotonic()
        await asyncio.sleep(0.25)


def run(
    settings: ServerSettings, run_dir: str, fd: int, parent: int | None = None, health_fd: int | None = None
) -> int:
    app, service = build(settings, run_dir)
    config = uvicorn.Config(
        app,
        log_level=settings.log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
        timeout_keep_alive=settings.keep_alive_s,
        http=guarded_http(settings.max_connections, settings.header_timeout_s, responder(service)),
    )
    server = DrainingServer(config, service, settings.drain_timeout_s)
    sock = socket.socket(fileno=fd)
    parent = os.getppid() if parent is None else parent

    beat = [time.monotonic()]
    if health_fd is not None:
        serve_probes(socket.socket(fileno=health_fd), service, beat)

    async def main():
        tasks = [asyncio.create_task(c) for c in (watch_parent(server, parent), heartbeat(server, beat))]
        try:
            await server.serve(sockets=[sock])
        finally:
            for t in tasks:
                t.cancel()

    try:
        from uvloop import run as runner
    except ImportError:
        runner = asyncio.run
    runner(main())
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m server.api_process")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--settings", required=True, help="ServerSettings as JSON (without the API key)")
    p.add_argument("--parent", type=int, required=True, help="the supervisor's pid (exit when it is gone)")
    p.add_argument("--health-fd", type=int, default=None, help="the probe port's listening socket")
    a = p.parse_args(argv)
    settings = ServerSettings(**json.loads(a.settings))  # the key, if any, from FLOWMAP_API_KEY
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(settings.log_level.upper())
    return run(settings, a.dir, a.fd, a.parent, a.health_fd)
