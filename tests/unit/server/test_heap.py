"""Serving processes freeze their start-up heap, so a full collection under load walks only what requests
made (server.common.heap; the p99 A/B is in docs/server.md)."""

from __future__ import annotations

import ctypes
import gc
import platform

import pytest
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


def test_the_freeze_trims_the_c_heap(monkeypatch):
    from server.common import heap

    calls = []
    monkeypatch.setattr(heap, "trim_c_heap", lambda: calls.append(1))
    try:
        heap.freeze_startup_heap()
    finally:
        gc.unfreeze()
    assert calls == [1]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trimming_gives_freed_heap_pages_back():
    """~100 MB in 64 KiB blocks (below glibc's mmap threshold: from the heap), all freed but the last, which
    pins the heap's top: glibc keeps the pages mapped until malloc_trim returns them."""
    from server.common.heap import trim_c_heap

    def rss_mb() -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(64 << 10) for _ in range(1600)]
    for b in blocks:
        ctypes.memset(b, 1, 64 << 10)  # touched: resident
    for b in blocks[:-1]:
        libc.free(b)
    before = rss_mb()
    assert trim_c_heap()
    after = rss_mb()
    libc.free(blocks[-1])
    assert before - after > 50, (before, after)


def test_the_api_process_freezes_once_its_app_has_started(tmp_path, monkeypatch):
    from server.api_process import process

    calls = []
    monkeypatch.setattr(process, "freeze_startup_heap", lambda: calls.append(1))
    app, _ = process.build(ServerSettings(models=["digits"]), str(tmp_path))
    assert calls == []
    with TestClient(app):
        assert calls == [1]
