"""Overload (429), deadline (504), client disconnect and drain on SIGTERM, with a deliberately slow engine.

The "slow" engine (tests/integration/slow_engine.py) is eager plus a fixed sleep per network call, so
queues build up on purpose; every loop here is bounded.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import time

import httpx
import pytest

from tests.integration.conftest import ServerProcess

# the count bound and the drain, not admission by time (tests/integration/test_overload.py): no time bound
SLOW = ["--max-batch-size", "4", "--max-wait-ms", "0", "--max-steps", "4", "--max-queue-ms", "600000"]


@pytest.fixture(scope="module")
def slow(checkpoints):
    s = ServerProcess(["--model", str(checkpoints["digits"]), *SLOW, "--max-queue", "2"], slow_ms=100)
    yield s.wait_ready()
    assert s.stop() == 0


def metric(url: str, name: str, **labels) -> float:
    text = httpx.get(url + "/metrics").text
    sel = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    m = (
        re.search(rf"^{name}{{{sel}}} (\S+)$", text, re.M)
        if labels
        else re.search(rf"^{name} (\S+)$", text, re.M)
    )
    return float(m.group(1)) if m else 0.0


async def post_many(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        return await asyncio.gather(*(c.post("/v1/generate", json=b) for b in bodies))


def test_overload_gets_429_with_retry_after(slow):
    rs = asyncio.run(post_many(slow.url, [{"num_samples": 4, "steps": 2, "seed": i} for i in range(10)]))
    codes = sorted(r.status_code for r in rs)
    assert set(codes) == {200, 429}, codes
    assert codes.count(200) >= 3  # one running + a queue of 2, at least
    for r in rs:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
    assert metric(slow.url, "flowmap_rejections_total", model="", reason="queue_full") >= codes.count(429)


def test_a_deadline_that_cannot_be_met_is_refused_at_once_and_the_server_goes_on(slow):
    """Behind 300 ms of work, a 100 ms deadline is refused when the core sees it (within one 100 ms
    network call), not answered 504 after its deadline. One step alone takes 100 ms here, so not even an
    idle core could meet it: a non-retryable 504 at once (a 429 with Retry-After would be retried forever
    by clients that retry), naming deadline_ms."""

    async def scenario():
        async with httpx.AsyncClient(base_url=slow.url, timeout=30) as c:
            long = asyncio.ensure_future(c.post("/v1/generate", json={"num_samples": 4, "steps": 4}))
            await asyncio.sleep(0.15)
            t = time.monotonic()
            short = await c.post("/v1/generate", json={"steps": 1, "deadline_ms": 100})
            return await long, short, time.monotonic() - t

    long, short, took = asyncio.run(scenario())
    assert long.status_code == 200 and short.status_code == 504, short.text
    assert "deadline_ms too short" in short.json()["detail"] and "retry-after" not in short.headers
    assert took < 0.5  # at once (at the core's next step boundary), not after the queue ahead
    assert httpx.post(slow.url + "/v1/generate", json={"steps": 1}).status_code == 200


def raw_post(port: int, body: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(
        b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    return s


def test_client_disconnect_cancels_queued_work(slow):
    nfe0 = metric(slow.url, "flowmap_network_evaluations_total", model="digits")
    cancelled0 = metric(slow.url, "flowmap_rejections_total", model="", reason="cancelled")

    async def scenario():
        async with httpx.AsyncClient(base_url=slow.url, timeout=30) as c:
            long = asyncio.ensure_future(c.post("/v1/generate", json={"num_samples": 4, "steps": 4}))
            await asyncio.sleep(0.15)  # the long request now fills the batch of 4
            gone = raw_post(slow.port, b'{"num_samples": 2, "steps": 1}')
            await asyncio.sleep(0.1)
            gone.close()  # queued behind the long one: cancelled, never computed
            return await long

    assert asyncio.run(scenario()).status_code == 200
    end = time.monotonic() + 5
    while metric(slow.url, "flowmap_rejections_total", model="", reason="cancelled") <= cancelled0:
        assert time.monotonic() < end, "disconnect was not noticed"
        time.sleep(0.05)
    assert metric(slow.url, "flowmap_network_evaluations_total", model="digits") - nfe0 == 16  # 4 x 4 only


def test_drain_on_sigterm_finishes_accepted_requests(checkpoints):
    s = ServerProcess(["--model", str(checkpoints["digits"]), *SLOW, "--drain-timeout", "20"], slow_ms=50)
    s.wait_ready()

    async def scenario():
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as c:
            accepted = [
                asyncio.ensure_future(c.post("/v1/generate", json={"num_samples": 4, "steps": 2, "seed": i}))
                for i in range(8)
            ]
            await asyncio.sleep(0.3)  # all 8 accepted; about 16 network calls x 50 ms of work remain
            s.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.1)
            async with httpx.AsyncClient(base_url=s.url, timeout=5) as fresh:
                ready = await fresh.get("/readyz")
                late = await fresh.post("/v1/generate", json={})
            return await asyncio.gather(*accepted), ready, late

    done, ready, late = asyncio.run(scenario())
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    assert late.status_code == 503
    assert [r.status_code for r in done] == [200] * 8, ([r.text[:200] for r in done], s.output()[-3000:])
    assert s.proc.wait(20) == 0
