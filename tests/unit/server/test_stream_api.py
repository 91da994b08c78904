"""`"stream": true` on /v1/generate, read with httpx-sse over the app in this process (the toy core of
test_service_app): a preview event per step, then exactly the non-streamed body; errors before the first
event stay plain HTTP errors (the images route's too); bad `stream` values name the field on both routes.
The images route's OpenAI events: test_images_stream."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from httpx_sse import aconnect_sse

from server.api_process.app import create_app
from server.api_process.service import GenParams
from tests.unit.server.inprocess import serve
from tests.unit.server.test_images_api import make_stack
from tests.unit.server.test_service_app import npy, run


async def events(client, route: str, body: dict) -> tuple[int, str, list]:
    async with aconnect_sse(client, "POST", route, json=body) as source:
        r = source.response
        got = [(e.event, json.loads(e.data)) async for e in source.aiter_sse()]
        return r.status_code, r.headers["content-type"], got


def without_timings(body: dict) -> dict:
    return {k: v for k, v in body.items() if k not in ("timings", "created")}


def test_a_stream_is_one_preview_per_step_then_the_plain_result():
    """v1's own events (the images route speaks OpenAI's: test_images_stream)."""
    stack = make_stack()
    route, body = "/v1/generate", {"steps": 3, "num_samples": 3, "seed": 5, "class_label": 4}

    async def go():
        plain = await stack.client.post(route, json=body)
        return plain, await events(stack.client, route, {**body, "stream": True})

    plain, (status, kind, got) = run(go())
    assert plain.status_code == 200 and status == 200 and kind.startswith("text/event-stream")
    assert [e for e, _ in got] == ["preview"] * 3 + ["result"]
    assert [d["step"] for _, d in got[:3]] == [1, 2, 3] and all(d["steps"] == 3 for _, d in got[:3])
    assert all(len(d["images"]) == 3 for _, d in got[:3])
    assert without_timings(got[-1][1]) == without_timings(plain.json())  # same seed: same images
    assert got[2][1]["images"] == got[-1][1]["images"]  # the last jump lands on t = 0: the result


def test_points_stream_as_floats_the_last_equal_to_the_result():
    _, _, client = serve("gmm8")  # the shipped 2-D model on the eager engine
    body = {"steps": 2, "num_samples": 5, "seed": 1, "output": "npy", "stream": True}
    status, _, got = run(events(client, "/v1/generate", body))
    assert status == 200 and [e for e, _ in got] == ["preview", "preview", "result"]
    first, last = (np.array(d["samples"], np.float32) for _, d in got[:2])
    assert first.shape == last.shape == (5, 2) and "images" not in got[0][1]
    np.testing.assert_array_equal(last, npy(got[-1][1]["array"]))  # float32 round-trips through JSON
    assert not np.array_equal(first, last)  # a 1-step jump from t = 1 is not the 2-step sample


def test_errors_before_the_first_event_stay_plain_http_errors():
    stack = make_stack()

    async def go():
        c = stack.client
        return [
            await c.post("/v1/generate", json={"model": "nope", "stream": True}),
            await c.post("/v1/generate", json={"steps": 99, "stream": True}),
            await c.post("/v1/images/generations", json={"prompt": "zzz", "stream": True}),
            await c.post(
                "/v1/images/generations", json={"prompt": "c1", "response_format": "url", "stream": True}
            ),
        ]

    nope, steps, prompt, url = run(go())
    assert nope.status_code == 404 and "nope" in nope.json()["detail"]
    assert steps.status_code == 422 and steps.json()["detail"][0]["loc"][:2] == ["body", "steps"]
    assert prompt.status_code == 400 and prompt.json()["error"]["param"] == "prompt"
    assert url.status_code == 400 and url.json()["error"]["param"] == "response_format"
    assert stack.service.inflight == 0


@pytest.mark.parametrize("value", ["true", 1, 0, None, [], {}, "yes", 1.0])
def test_stream_must_be_a_boolean_on_both_routes(value):
    stack = make_stack()

    async def go():
        v1 = await stack.client.post("/v1/generate", json={"stream": value})
        oa = await stack.client.post("/v1/images/generations", json={"prompt": "c1", "stream": value})
        return v1, oa

    v1, oa = run(go())
    assert v1.status_code == 422 and v1.json()["detail"][0]["loc"] == ["body", "stream"]
    assert oa.status_code == 400 and oa.json()["error"]["param"] == "stream"


def test_a_stream_that_fails_after_its_first_event_ends_with_an_error_event():
    stack = make_stack()
    core = stack.core

    def fail_after_first_preview(frame_handler):
        def on_preview(msg):
            frame_handler(msg)
            core.fail_all("engine core stopped")  # the core goes away mid-stream

        return on_preview

    real_submit = core.submit
    core.submit = lambda make, on_preview=None: real_submit(make, fail_after_first_preview(on_preview))
    status, _, got = run(events(stack.client, "/v1/generate", {"steps": 3, "stream": True}))
    assert status == 200 and [e for e, _ in got] == ["preview", "error"]
    assert got[-1][1]["status"] == 503 and "engine core stopped" in got[-1][1]["detail"]
    assert stack.service.inflight == 0


def test_giving_up_on_a_streamed_request_cancels_it_in_the_core():
    stack = make_stack()
    core, got = stack.core, []

    async def go():
        core.paused = True  # the core steps only when told
        p = GenParams(steps=4, num_samples=2, seed=0)
        task = asyncio.ensure_future(stack.service.generate(p, on_preview=got.append))
        await asyncio.sleep(0)
        core.server.core.step()  # one step of four: one preview out
        core.pump()
        await asyncio.sleep(0)
        task.cancel()  # what a stream does when its client leaves
        with pytest.raises(asyncio.CancelledError):
            await task

    run(go())
    sched = core.server.core.scheduler
    assert [v.step for v in got] == [1] and core.cancelled == [1]
    assert not core.server.jobs and not sched.jobs and stack.service.inflight == 0
    assert core.server.core.step() is None and sched.in_flight() == 0  # its rows dropped at the boundary


@pytest.mark.parametrize("value", [True, "yes", 1, {}])
def test_v2_says_it_does_not_stream(value):
    stack = make_stack()
    seed = {"name": "seed", "shape": [1], "datatype": "INT64", "data": [1]}
    body = {"inputs": [seed], "parameters": {"stream": value}}
    r = run(stack.client.post("/v2/models/toy/infer", json=body))
    assert r.status_code == 400 and "stream" in r.json()["error"], r.text
    ok = run(stack.client.post("/v2/models/toy/infer", json={**body, "parameters": {"stream": False}}))
    assert ok.status_code == 200


def test_a_steered_request_streams_one_preview_per_sample(tmp_path):
    from tests.unit.server.test_consistency_api import checkpoint

    _, _, client = serve(str(checkpoint(tmp_path / "toy.safetensors", "esd")), max_particles=8)
    steer = {"reward": "ink", "scale": 20.0, "particles": 4}
    body = {"steps": 3, "num_samples": 2, "seed": 5, "class_label": 1, "output": "npy", "steer": steer}
    status, _, got = run(events(client, "/v1/generate", {**body, "stream": True}))
    assert status == 200 and [e for e, _ in got] == ["preview"] * 3 + ["result"]
    assert all(len(d["images"]) == 2 for _, d in got[:3])
    plain = run(client.post("/v1/generate", json=body))
    assert npy(plain.json()["array"]).tolist() == npy(got[-1][1]["array"]).tolist()


def test_a_stream_closed_before_its_first_iteration_is_cancelled_and_recorded():
    """The client is gone by the time Starlette starts the response (sending its start fails): the
    generator never runs, yet the request must be cancelled in the core and recorded (499)."""
    stack = make_stack()
    core, rejected, reject = stack.core, [], stack.service.reject
    stack.service.reject = lambda reason, model: rejected.append(reason) or reject(reason, model)
    app = create_app(stack.service, stack.metrics)
    body = json.dumps({"steps": 4, "stream": True}).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/generate",
        "raw_path": b"/v1/generate",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"t"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("t", 80),
    }

    async def go():
        core.paused = True
        never = asyncio.Event()
        sent = iter([{"type": "http.request", "body": body, "more_body": False}])

        async def receive():
            msg = next(sent, None)
            if msg is None:
                await never.wait()
            return msg

        async def send(msg):
            raise OSError("connection reset")  # the client left: nothing of the stream goes out

        app_task = asyncio.ensure_future(app(scope, receive, send))
        for _ in range(20):
            await asyncio.sleep(0)
        core.server.core.step()  # one step of four: the first preview, so a stream response starts
        core.pump()
        try:
            await asyncio.wait_for(app_task, 2)
        except Exception:
            pass
        for _ in range(20):
            await asyncio.sleep(0)

    run(go())
    assert core.cancelled == [1] and stack.service.inflight == 0
    assert rejected == ["cancelled"]  # recorded once, as a client gone (499)
