"""Streamed generation over real HTTP (a server process, the slow test engine: 100 ms per step) read with
httpx-sse: previews (v1's, and OpenAI's partial images) arrive step by step, not buffered; a client that
leaves mid-stream, or mid-request without streaming, frees its rows at the next step boundary
(flowmap_dropped_rows_total), leaks no in-flight count, and the server goes on serving."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest
from httpx_sse import connect_sse

from tests.integration.conftest import ServerProcess
from tests.integration.test_load import SLOW, metric

STEP_S = 0.1


@pytest.fixture(scope="module")
def slow(checkpoints):
    s = ServerProcess(
        ["--model", str(checkpoints["digits"]), *SLOW, "--max-queue", "4"], slow_ms=1e3 * STEP_S
    )
    yield s.wait_ready()
    assert s.stop() == 0


def stream(url: str, route: str, body: dict) -> list[tuple[str, dict, float]]:
    """(event, data, seconds since the request) of every event of a streamed request."""
    t0 = time.monotonic()
    with httpx.Client(base_url=url, timeout=30) as c, connect_sse(c, "POST", route, json=body) as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        return [(e.event, json.loads(e.data), time.monotonic() - t0) for e in source.iter_sse()]


def plain(body: dict) -> dict:
    return {k: v for k, v in body.items() if k not in ("timings", "created")}


def test_previews_arrive_step_by_step_then_the_plain_result(slow):
    body = {"steps": 4, "num_samples": 2, "seed": 3, "class_label": 1}
    got = stream(slow.url, "/v1/generate", {**body, "stream": True})
    assert [e for e, _, _ in got] == ["preview"] * 4 + ["result"]
    assert [d["step"] for _, d, _ in got[:4]] == [1, 2, 3, 4]
    assert all(len(d["images"]) == 2 for _, d, _ in got[:4])
    first, last = got[0][2], got[-1][2]
    assert last - first > 2 * STEP_S  # streamed as computed (three more steps), not buffered to the end
    same = httpx.post(slow.url + "/v1/generate", json=body, timeout=30)
    assert same.status_code == 200 and plain(got[-1][1]) == plain(same.json())


def test_openai_partial_images_arrive_step_by_step_then_the_plain_images(slow):
    body = {"prompt": "1", "steps": 4, "n": 2, "seed": 3, "output_format": "webp"}
    got = stream(slow.url, "/v1/images/generations", {**body, "stream": True, "partial_images": 3})
    partial, completed = "image_generation.partial_image", "image_generation.completed"
    assert [e for e, _, _ in got] == [partial] * 6 + [completed] * 2
    assert [d["type"] for _, d, _ in got] == [e for e, _, _ in got]
    assert [(d["partial_image_index"], d["step"], d["index"]) for _, d, _ in got[:6]] == [
        (j, j + 1, i) for j in range(3) for i in range(2)
    ]
    assert got[-1][2] - got[0][2] > 2 * STEP_S  # streamed as computed (three more steps), not buffered
    same = httpx.post(slow.url + "/v1/images/generations", json=body, timeout=30)
    assert same.status_code == 200
    assert [d["b64_json"] for _, d, _ in got[-2:]] == [d["b64_json"] for d in same.json()["data"]]


def wait_for(url: str, name: str, above: float, timeout: float = 5.0, **labels) -> float:
    """Seconds until metric `name` exceeds `above` (polled every 5 ms)."""
    t0 = time.monotonic()
    while metric(url, name, **labels) <= above:
        assert time.monotonic() - t0 < timeout, f"{name} stayed at {above}"
        time.sleep(0.005)
    return time.monotonic() - t0


def test_leaving_mid_stream_frees_the_rows_at_the_next_step(slow):
    dropped0 = metric(slow.url, "flowmap_dropped_rows_total", model="digits")
    nfe0 = metric(slow.url, "flowmap_network_evaluations_total", model="digits")
    cancelled0 = metric(slow.url, "flowmap_rejections_total", model="", reason="cancelled")
    body = {"steps": 4, "num_samples": 4, "seed": 0, "stream": True}
    with (
        httpx.Client(base_url=slow.url, timeout=30) as c,
        connect_sse(c, "POST", "/v1/generate", json=body) as s,
    ):
        assert next(iter(s.iter_sse())).event == "preview"  # step 1 of 4 is done
    freed = wait_for(slow.url, "flowmap_dropped_rows_total", dropped0, model="digits")
    print(
        f"\ntime to free after a streamed client left: {1e3 * freed:.0f} ms (one step: {1e3 * STEP_S:.0f} ms)"
    )
    assert metric(slow.url, "flowmap_dropped_rows_total", model="digits") - dropped0 == 4
    assert metric(slow.url, "flowmap_network_evaluations_total", model="digits") - nfe0 < 16
    wait_for(slow.url, "flowmap_rejections_total", cancelled0, model="", reason="cancelled")
    after = httpx.post(slow.url + "/v1/generate", json={"steps": 1}, timeout=30)
    assert after.status_code == 200
    assert metric(slow.url, "flowmap_samples_in_flight", model="digits") == 0


def test_leaving_a_running_plain_request_frees_its_rows(slow):
    dropped0 = metric(slow.url, "flowmap_dropped_rows_total", model="digits")
    body = b'{"num_samples": 4, "steps": 4}'
    s = socket.create_connection(("127.0.0.1", slow.port))
    s.sendall(
        b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    time.sleep(1.5 * STEP_S)  # admitted and running
    s.close()
    freed = wait_for(slow.url, "flowmap_dropped_rows_total", dropped0, model="digits")
    print(f"\ntime to free after a plain client left: {1e3 * freed:.0f} ms")
    assert metric(slow.url, "flowmap_dropped_rows_total", model="digits") - dropped0 == 4
    assert httpx.post(slow.url + "/v1/generate", json={"steps": 1}, timeout=30).status_code == 200


def test_a_full_queue_refuses_streams_with_a_plain_429(slow):
    async def one(c: httpx.AsyncClient, i: int):
        body = {"steps": 2, "num_samples": 4, "seed": i, "stream": True}
        async with c.stream("POST", "/v1/generate", json=body) as r:
            return r.status_code, r.headers, (await r.aread()).decode()

    async def scenario():
        async with httpx.AsyncClient(base_url=slow.url, timeout=30) as c:
            return await asyncio.gather(*(one(c, i) for i in range(12)))

    got = asyncio.run(scenario())
    assert {s for s, _, _ in got} == {200, 429}, [s for s, _, _ in got]
    for status, headers, text in got:
        if status == 429:  # refused before its first event: JSON, with Retry-After, as without stream
            assert headers["content-type"] == "application/json" and int(headers["retry-after"]) >= 1
            assert "queue full" in json.loads(text)["detail"]
        else:
            assert headers["content-type"].startswith("text/event-stream")
            assert text.count("event: preview") == 2 and text.rstrip().split("\n")[-2] == "event: result"
