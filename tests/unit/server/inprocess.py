"""A CoreClient stand-in over a real CoreServer in this process, and a whole API stack over it for a
checkpoint: the in-process tests of service, app and v2 share these."""

from __future__ import annotations

import asyncio

import httpx

from server.api_process.app import create_app
from server.api_process.service import Service
from server.common import messages as m
from server.common.estimator import ReportedWait
from server.common.settings import ServerSettings
from server.core_process.build import build_core
from server.core_process.process import CoreServer


class InProcess:
    """CoreClient's interface over a CoreServer in this process; `paused` lets requests queue up."""

    def __init__(self, server: CoreServer):
        self.server, self.pending, self.ids, self.paused = server, {}, 0, False
        self.reported = ReportedWait()
        self.previews, self.cancelled = {}, []

    def submit(self, make, on_preview=None):
        self.ids += 1
        fut = asyncio.get_running_loop().create_future()
        self.pending[self.ids] = fut
        if on_preview is not None:
            self.previews[self.ids] = on_preview
        self.server.handle(b"api", m.encode(make(self.ids)))
        asyncio.get_running_loop().call_soon(self.pump)
        return self.ids, fut

    def notify(self, msg) -> None:
        self.server.handle(b"api", m.encode(msg))

    def cancel(self, rid: int) -> None:
        """As CoreClient.cancel: the request is cancelled in the core too."""
        self.cancelled.append(rid)
        self.previews.pop(rid, None)
        if self.pending.pop(rid, None) is not None:
            self.server.handle(b"api", m.encode(m.Cancel(rid)))

    def pump(self) -> None:
        while not self.paused and self.server.core.step() is not None:
            pass
        for _, frame in self.server.outbox:
            out = m.decode(frame)
            if isinstance(out, m.Preview):
                if out.id in self.previews:
                    self.previews[out.id](out)
                continue
            self.reported.observe(out.wait_s, out.sent)
            fut = self.pending.pop(out.id, None)
            if fut is not None and not fut.done():
                fut.set_result(out)
        self.server.outbox.clear()


def serve(spec: str, metrics=None, **overrides):
    """(model, client, http): checkpoint `spec` on the eager engine behind the app, one core in process."""
    kw = dict(max_steps=4, max_samples=16, max_queue=16, engine="eager", device="cpu")
    settings = ServerSettings(**(kw | overrides))
    core, model, info = build_core(spec, settings)
    client = InProcess(CoreServer(core, model, settings, link=None))
    service = Service(settings, [client], metrics)
    service.on_states(m.CoreStates([{"up": True, "generation": 1, "info": info}]))
    app = create_app(service, metrics)
    return model, client, httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
