"""Serving processes freeze their start-up heap, so a full collection under load walks only what requests
made (server.common.heap; the p99 A/B is in docs/server.md)."""

from __future__ import annotations

import gc

from fastapi.testclient import TestClient

from server.common.heap import freeze_startup_heap
from server.common.settings import ServerSettings


def test_freeze_puts_what_is_alive_now_out_of_the_collectors_reach():
    gc.unfreeze()
    keep = [[] for _ in range(1000)]  # tracked containers
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() >= len(keep)
        oldest = {id(o) for o in gc.get_objects(2)}  # what a full collection would walk
        assert not any(id(x) in oldest for x in keep)
    finally:
        gc.unfreeze()


def test_the_api_process_freezes_once_its_app_has_started(tmp_path, monkeypatch):
    from server.api_process import process

    calls = []
    monkeypatch.setattr(process, "freeze_startup_heap", lambda: calls.append(1))
    app, _ = process.build(ServerSettings(models=["digits"]), str(tmp_path))
    assert calls == []
    with TestClient(app):
        assert calls == [1]
