"""Run the server: load models, build the app, serve with uvicorn; SIGTERM drains before exiting 0."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading

import uvicorn

from server.settings import ServerSettings

log = logging.getLogger("flowmap.server")


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM/SIGINT starts a drain instead of closing the sockets at once.

    Readiness fails immediately and new requests get 503 while accepted ones finish (up to the drain
    timeout); then uvicorn shuts down normally and the process exits 0. A second SIGINT forces exit.
    """

    def __init__(self, config: uvicorn.Config, service, drain_timeout: float):
        super().__init__(config)
        self.service, self.drain_timeout = service, drain_timeout
        self.draining = False
        self.loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets=None) -> None:
        self.loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():
            # the loop's own handlers: uvloop does not run signal.signal handlers promptly
            for sig in (signal.SIGTERM, signal.SIGINT):
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
            "signal %d: draining (%d requests in flight, timeout %.0f s)",
            sig,
            self.service.inflight,
            self.drain_timeout,
        )
        self.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain()))

    async def _drain(self) -> None:
        ok = await self.service.drained(self.drain_timeout)
        if not ok:
            log.warning("drain timeout: %d requests still in flight", self.service.inflight)
        self.should_exit = True


def build(settings: ServerSettings):
    """(app, service): models and engines loaded, workers not yet started."""
    import torch

    from server import ops
    from server.app import VERSION, create_app
    from server.metrics import Metrics
    from server.service import Service, build_entry

    torch.set_num_threads(settings.threads)
    entries, holder = {}, {}
    for m in settings.models:
        e = build_entry(m, settings, lambda s: holder["service"].on_iteration(s))
        if e.name in entries:
            raise ValueError(f"two models are named {e.name!r}; serve each name once")
        entries[e.name] = e
    engine_names = ",".join(sorted({e.engine_name for e in entries.values()}))
    metrics = Metrics(VERSION, engine_names, ops.BACKEND)
    service = Service(settings, entries, metrics)
    holder["service"] = service
    return create_app(service, metrics), service


def run(settings: ServerSettings) -> int:
    """Serve until SIGTERM/SIGINT; 0 after a clean drain."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(settings.log_level.upper())
    app, service = build(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=5,
        access_log=False,
        lifespan="on",
    )
    server = DrainingServer(config, service, settings.drain_timeout_s)
    server.run()
    return 0 if server.started else 1


def main(argv: list[str] | None = None) -> int:
    """`python -m server`: the same flags as `flowmap serve`."""
    import argparse

    from server.cli import register

    parser = argparse.ArgumentParser(prog="python -m server")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)
