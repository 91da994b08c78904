"""Past capacity: admission by predicted time answers 429 + Retry-After at once, accepted requests finish
in time, and /healthz stays fast, on a real server with the slow test engine (20 ms per network call)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
import numpy as np
import pytest

from tests.integration.conftest import ServerProcess, free_port

CALL_MS, MAX_QUEUE_MS = 20, 100


@pytest.fixture(scope="module")
def busy(checkpoints):
    flags = ["--max-batch-size", "8", "--max-steps", "4", "--max-queue-ms", str(MAX_QUEUE_MS)]
    health = free_port()
    s = ServerProcess(
        ["--model", str(checkpoints["digits"]), *flags, "--health-port", str(health)], slow_ms=CALL_MS
    )
    s.health_port = health
    yield s.wait_ready()
    assert s.stop() == 0


def probe(port: int, path: bytes = b"/healthz", method: bytes = b"GET", status: int = 200) -> float:
    """One kubelet-style probe: a fresh connection, GET /healthz, Connection: close; seconds to the answer."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(method + b" " + path + b" HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
        head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 %d " % status), head
    return time.perf_counter() - t0


async def timed(c: httpx.AsyncClient, body: dict) -> tuple[httpx.Response, float]:
    t0 = time.perf_counter()
    r = await c.post("/v1/generate", json=body)
    return r, time.perf_counter() - t0


async def flood(url: str, waves: int, per_wave: int) -> list[tuple[httpx.Response, float]]:
    """`waves` bursts of `per_wave` 8-sample 2-step requests, 50 ms apart: about 10x what the core does."""
    limits = httpx.Limits(max_connections=per_wave * waves)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as c:
        tasks = []
        for w in range(waves):
            bodies = [
                {"num_samples": 8, "steps": 2, "seed": w * 1000 + i, "output": "npy"} for i in range(per_wave)
            ]
            tasks += [asyncio.ensure_future(timed(c, b)) for b in bodies]
            await asyncio.sleep(0.05)
        return await asyncio.gather(*tasks)


def test_overload_is_shed_fast_accepted_requests_finish_in_time_and_health_stays_fast(busy):
    probes: list[float] = []
    own_port: list[float] = []  # the same probe on --health-port, answered by a thread
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            probes.append(probe(busy.port))
            own_port.append(probe(busy.health_port))
            time.sleep(0.02)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        out = asyncio.run(flood(busy.url, waves=8, per_wave=12))
    finally:
        stop.set()
        poller.join()
    codes = [r.status_code for r, _ in out]
    assert set(codes) <= {200, 429}, sorted(set(codes))  # never a 5xx
    ok = [t for r, t in out if r.status_code == 200]
    refused = [(r, t) for r, t in out if r.status_code == 429]
    assert len(ok) >= 4 and len(refused) >= len(out) // 2, (len(ok), len(refused))
    for r, _ in refused:
        assert int(r.headers["retry-after"]) >= 1 and r.json()["detail"].startswith("overloaded: ")
    # accepted: at most the queue bound plus its own 2 calls (and this busy box's slack)
    own = 2 * CALL_MS / 1e3
    assert max(ok) < MAX_QUEUE_MS / 1e3 + own + 0.5, sorted(ok)[-5:]
    # refused: at once (the core's next step boundary at worst), far below what accepted ones take. The
    # bars are relative or loose: a 2-core CI box stalls any process now and then (the 50 ms goals are
    # benchmarks, loadtests/overload.py, not tests)
    assert np.median([t for _, t in refused]) < min(0.25, np.median(ok) / 2), sorted(t for _, t in refused)[
        -5:
    ]
    assert len(probes) >= 10 and np.median(probes) < 0.05 and max(probes) < 1.0, sorted(probes)[-5:]
    assert np.median(own_port) < 0.05 and max(own_port) < 1.0, sorted(own_port)[-5:]
    # and it serves normally afterwards
    time.sleep(0.5)
    r = httpx.post(busy.url + "/v1/generate", json={"num_samples": 8, "steps": 2}, timeout=10)
    assert r.status_code == 200 and r.json()["steps"] == 2


def test_queue_wait_is_exported_in_seconds(busy):
    text = httpx.get(busy.url + "/metrics").text
    assert 'flowmap_queue_depth_seconds{model="digits"}' in text
    assert "flowmap_queue_wait_seconds_bucket" in text


def test_the_probe_port_answers_only_probes(busy):
    probe(busy.health_port, b"/readyz")
    probe(busy.health_port, b"/v1/models", status=404)
    probe(busy.health_port, b"/healthz", method=b"POST", status=405)
    probe(busy.port, b"/healthz")  # the main port keeps its own probes
