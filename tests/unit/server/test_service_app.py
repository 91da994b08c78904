"""The API side (service, app, v1 and v2 codecs) over a real engine core in the same process.

`InProcessCore` stands in for server.api_process.client.CoreClient: frames go to a real `CoreServer` (the
engine core's message side) driving a real `EngineCore` with a fake engine, and its outputs settle the
futures, so everything but the ZeroMQ sockets and the processes runs as in production.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import io
import re
import time
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch

from flowmap.samplers import guided, make_noise, sample_flowmap, uniform_grid
from server.api_process.app import create_app
from server.api_process.client import CoreDown
from server.api_process.service import LOST_HOLD, Service
from server.common import messages as m
from server.common.metrics import Metrics
from server.common.settings import ServerSettings
from server.core_process.engine_core import EngineCore, Executor
from server.core_process.process import CoreServer
from server.core_process.scheduler import Scheduler
from tests.unit.server.inprocess import InProcess

SHAPE, C = [1, 2, 2], 10
INFO = {
    "name": "toy",
    "shape": SHAPE,
    "num_classes": C,
    "image": True,
    "engine": "fake",
    "device": "cpu",
    "baked_guidance_scale": 1.0,
    "method": "esd",
}


def fake_engine(x, s, t, y):
    """u(x, s, t, y) by elementwise ops only (exact whatever the batch)."""
    e = lambda v: v.float().reshape(-1, 1, 1, 1)
    return -0.5 * x + 0.1 * e(y) + e(s) * x - e(t)


class InProcessCore(InProcess):
    """A toy core (fake engine) behind CoreClient's interface; `down` refuses as a lost core does."""

    def __init__(self, settings: ServerSettings):
        sched = Scheduler(settings.max_batch_size, settings.max_queue, 0.0, settings.max_steps)
        core = EngineCore("toy", sched, Executor(fake_engine, C, conditional=True))
        model = SimpleNamespace(shape=SHAPE, num_classes=C, config={"method": "esd"})
        super().__init__(CoreServer(core, model, settings, link=None))
        self.down = False

    def submit(self, make, on_preview=None):
        if self.down:
            raise CoreDown("engine core not connected")
        return super().submit(make, on_preview)

    def reconnect(self, reason: str) -> None:
        self.fail_all(reason)

    def fail_all(self, reason: str) -> None:
        for fut in self.pending.values():
            if not fut.done():  # as CoreClient.fail_all: a wait that ended cancelled its future
                fut.set_exception(CoreDown(reason))
        self.pending.clear()
        self.previews.clear()


def states(up: bool, generation: int = 1) -> m.CoreStates:
    return m.CoreStates([{"up": up, "generation": generation, "info": INFO}])


@pytest.fixture()
def stack():
    settings = ServerSettings(max_steps=4, max_samples=16, max_queue=2, request_timeout_ms=2000)
    core = InProcessCore(settings)
    metrics = Metrics()
    service = Service(settings, [core], metrics)
    service.on_states(states(True))
    app = create_app(service, metrics)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    return SimpleNamespace(service=service, core=core, client=client, metrics=metrics)


def run(coro):
    return asyncio.run(coro)


def reference(n: int, steps: int, seed: int, labels: list[int], w: float = 1.0) -> np.ndarray:
    u = guided(fake_engine, w, C)
    return sample_flowmap(u, make_noise(n, SHAPE, seed), uniform_grid(steps), torch.tensor(labels)).numpy()


def npy(b64: str) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(b64)), allow_pickle=False)


def test_v1_and_v2_give_the_samples_flowmap_sample_gives(stack):
    async def go():
        v1 = await stack.client.post(
            "/v1/generate",
            json={
                "steps": 3,
                "num_samples": 4,
                "seed": 7,
                "class_label": 2,
                "guidance_scale": 1.5,
                "output": "npy",
            },
        )
        inputs = [
            {"name": "seed", "shape": [1], "datatype": "INT64", "data": [7]},
            {"name": "steps", "shape": [1], "datatype": "INT32", "data": [3]},
            {"name": "num_samples", "shape": [1], "datatype": "INT32", "data": [4]},
            {"name": "class_label", "shape": [1], "datatype": "INT32", "data": [2]},
            {"name": "guidance_scale", "shape": [1], "datatype": "FP32", "data": [1.5]},
        ]
        v2 = await stack.client.post("/v2/models/toy/infer", json={"inputs": inputs})
        return v1, v2

    v1, v2 = run(go())
    assert v1.status_code == 200 and v2.status_code == 200, (v1.text, v2.text)
    want = reference(4, 3, 7, [2] * 4, 1.5)
    np.testing.assert_allclose(npy(v1.json()["array"]), want, rtol=0, atol=1e-6)
    (samples,) = [o for o in v2.json()["outputs"] if o["name"] == "samples"]
    np.testing.assert_allclose(np.array(samples["data"]).reshape(want.shape), want, rtol=0, atol=1e-6)
    assert v1.json()["timings"]["total_ms"] >= v1.json()["timings"]["compute_ms"] >= 0


def test_concurrent_requests_share_calls_and_stay_batch_invariant(stack):
    async def go():
        bodies = [{"steps": 1 + i % 4, "num_samples": 2, "seed": i, "output": "npy"} for i in range(6)]
        stack.core.server.core.scheduler.max_queue = 16
        stack.core.paused = True  # let all six queue, then run them together
        tasks = [asyncio.ensure_future(stack.client.post("/v1/generate", json=b)) for b in bodies]
        await asyncio.sleep(0.05)
        stack.core.paused = False
        stack.core.pump()
        return bodies, await asyncio.gather(*tasks)

    bodies, rs = run(go())
    for b, r in zip(bodies, rs, strict=True):
        want = reference(2, b["steps"], b["seed"], [0, 1])  # classes cycle 0..C-1 when omitted
        np.testing.assert_allclose(npy(r.json()["array"]), want, rtol=0, atol=1e-6)


def test_a_stopped_core_fails_held_requests_with_503_and_readiness(stack):
    async def go():
        stack.core.paused = True
        held = asyncio.ensure_future(stack.client.post("/v1/generate", json={"steps": 2}))
        await asyncio.sleep(0.05)
        stack.service.on_states(states(False, generation=1))  # the supervisor saw the core die
        r = await held
        ready = await stack.client.get("/readyz")
        refused = await stack.client.post("/v1/generate", json={})
        stack.core.paused = False
        stack.service.on_states(states(True, generation=2))  # restarted
        again = await stack.client.post("/v1/generate", json={})
        return r, ready, refused, again

    r, ready, refused, again = run(go())
    assert r.status_code == 503 and "engine core" in r.json()["detail"]
    assert ready.status_code == 503 and refused.status_code == 503
    assert again.status_code == 200


def test_a_closed_core_connection_turns_the_api_not_ready_before_the_supervisor_says_so(stack):
    async def go():
        stack.core.on_lost()  # what CoreClient calls when the core closes its connection
        out = [await stack.client.get("/readyz"), await stack.client.post("/v1/generate", json={})]
        stack.service.on_states(states(True, generation=1))  # the supervisor has not noticed yet
        out.append(await stack.client.get("/readyz"))
        gen, when = stack.service.lost[0]  # no exit reported for a while: the core lives, it only
        stack.service.lost[0] = (gen, when - LOST_HOLD - 0.1)  # dropped the connection
        stack.service.on_states(states(True, generation=1))
        out.append(await stack.client.get("/readyz"))
        stack.core.on_lost()
        stack.service.on_states(states(True, generation=2))  # a successor: up at once
        out.append(await stack.client.get("/readyz"))
        return [r.status_code for r in out]

    assert run(go()) == [503, 503, 503, 200, 200]


def test_queue_full_gives_429_with_retry_after_and_deadline_504(stack):
    async def go():
        stack.core.server.core.scheduler.max_batch = 1  # one running, max_queue (2) waiting
        stack.core.paused = True
        body = {"deadline_ms": 100}
        first = [asyncio.ensure_future(stack.client.post("/v1/generate", json=body)) for _ in range(3)]
        await asyncio.sleep(0.02)
        full = await stack.client.post("/v1/generate", json={})
        return full, await asyncio.gather(*first)

    full, late = run(go())
    assert full.status_code == 429 and int(full.headers["retry-after"]) >= 1
    assert [r.status_code for r in late] == [504, 504, 504]


def test_unknown_models_mint_no_series_and_v2_400_is_recorded_as_400(stack):
    async def go():
        for i in range(50):
            await stack.client.post("/v1/generate", json={"model": f"nope-{i}"})
            await stack.client.post(f"/v2/models/nope-{i}/infer", json={"inputs": []})
        bad = {
            "name": "class_label",
            "shape": [1],
            "datatype": "INT32",
            "data": [99],
        }  # decodes; out of range
        r = await stack.client.post("/v2/models/toy/infer", json={"inputs": [bad]})
        assert r.status_code == 400 and "class_label" in r.json()["error"]
        return (await stack.client.get("/metrics")).text

    text = run(go())
    assert "nope-" not in text
    assert re.search(r'flowmap_rejections_total\{model="",reason="not_found"\} 100\.0', text)
    assert 'flowmap_request_duration_seconds_count{model="toy",status="400",steps="1"}' in text
    assert 'status="422"' not in text


def test_draining_refuses_new_work_and_fails_readiness(stack):
    stack.service.begin_drain()

    async def go():
        return await stack.client.post("/v1/generate", json={}), await stack.client.get("/readyz")

    r, ready = run(go())
    assert r.status_code == 503 and r.json()["detail"] == "server is draining"
    assert ready.json() == {"status": "draining"}


def test_openapi_declares_no_security_without_a_key(stack):
    spec = run(stack.client.get("/openapi.json")).json()
    assert "securitySchemes" not in spec.get("components", {})


def test_one_core_down_leaves_the_other_models_serving():
    settings = ServerSettings(models=["a", "b"], max_steps=4)
    cores = [InProcessCore(settings), InProcessCore(settings)]
    service = Service(settings, cores)
    infos = [dict(INFO, name="a"), dict(INFO, name="b")]
    service.on_states(m.CoreStates([{"up": True, "generation": 1, "info": i} for i in infos]))
    service.on_states(m.CoreStates([{"up": True, "generation": 1, "info": infos[0]},
                                    {"up": False, "generation": 1, "info": infos[1]}]))  # fmt: skip
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(service)), base_url="http://t")

    async def go():
        return [await client.post("/v1/generate", json={"model": n}) for n in "ab"] + [
            await client.get("/readyz")
        ]

    a, b, ready = run(go())
    assert a.status_code == 200
    assert b.status_code == 503 and "'b'" in b.json()["detail"] and b.headers["retry-after"] == "1"
    assert ready.status_code == 503  # readiness is for the whole server


def test_before_any_core_is_up_v2_says_503_not_404():
    settings = ServerSettings(max_steps=4)
    service = Service(settings, [InProcessCore(settings)])
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(service)), base_url="http://t")

    async def go():
        return await client.post("/v2/models/toy/infer", json={"inputs": []}), await client.get(
            "/v2/models/toy"
        )

    infer, meta = run(go())
    assert infer.status_code == 503 and meta.status_code == 503


@pytest.mark.parametrize(
    "fields",
    [
        {"labels": ["a"]},
        {"labels": 5},
        {"labels": [1.0]},
        {"id": [1]},
        {"deadline": "x"},
        {"deadline": float("nan")},
        {"n": True},
        {"steps": 0, "deadline": "soon"},
        {"guidance": float("inf")},
        {"margin": -1.0},
        {"margin": float("nan")},
        {"margin": "x"},
        {"preview": "yes"},
        {"preview": 1},
    ],
)
def test_a_malformed_generate_never_stops_the_core(fields):
    core = InProcessCore(ServerSettings(max_steps=4))
    good = dict(id=1, n=1, seed=0, steps=1, labels=[1], guidance=1.0, deadline=time.monotonic() + 10)
    core.server.handle(b"api", m.encode(m.Generate(**{**good, **fields})))
    core.server.handle(b"api", m.encode(m.Cancel({})))
    core.server.handle(b"api", b"\x93garbage")
    core.server.handle(b"api", m.encode(m.Generate(**{**good, "id": 2})))  # the core still serves
    while core.server.core.step() is not None:
        pass
    outs = [m.decode(f) for _, f in core.server.outbox]
    assert isinstance(outs[-1], m.Done) and outs[-1].id == 2
    assert all(isinstance(o, m.Failed) and o.kind == "invalid" for o in outs[:-1])


def test_a_refused_request_draws_no_noise(monkeypatch):
    import server.core_process.process as cp

    core = InProcessCore(ServerSettings(max_steps=4, max_queue=1, max_batch_size=1))
    gen = lambda i: m.encode(m.Generate(i, 1, i, 1, [1], 1.0, time.monotonic() + 10))
    for i in (1, 2):  # one admitted, one waiting: the queue is full
        core.server.handle(b"api", gen(i))
    monkeypatch.setattr(cp, "make_noise", lambda *a: pytest.fail("noise drawn for a refused request"))
    core.server.handle(b"api", gen(3))
    (refusal,) = [m.decode(f) for _, f in core.server.outbox]
    assert refusal.kind == "queue_full" and refusal.retry_after >= 1


def test_the_api_sheds_load_before_it_reaches_the_core():
    settings = ServerSettings(max_steps=4, max_queue=1, max_batch_size=1)
    core = InProcessCore(settings)
    service = Service(settings, [core])
    service.on_states(states(True))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(service)), base_url="http://t")
    sent = []
    handle = core.server.handle
    core.server.handle = lambda ident, frame: sent.append(frame) or handle(ident, frame)

    async def go():
        core.paused = True
        held = [asyncio.ensure_future(client.post("/v1/generate", json={"deadline_ms": 200})) for _ in (0, 1)]
        await asyncio.sleep(0.02)
        shed = await client.post("/v1/generate", json={})
        return shed, await asyncio.gather(*held)

    shed, held = run(go())
    assert shed.status_code == 429 and shed.headers["retry-after"] == "1"
    assert sum(isinstance(m.decode(f), m.Generate) for f in sent) == 2  # the third never reached the core
    assert [r.status_code for r in held] == [504, 504]
    # ... except as an arrival, which "auto" steps follow: 3 one-row one-step requests in the demand
    assert [m.decode(f) for f in sent if isinstance(m.decode(f), m.Shed)] == [m.Shed(rows=1, steps=1)]
    assert core.server.core.scheduler.demand.fixed == pytest.approx(3, rel=0.2)


def test_auto_reserves_the_results_way_back_learned_from_earlier_results(monkeypatch):
    settings = ServerSettings(max_steps=4, request_timeout_ms=2000)
    core = InProcessCore(settings)
    service = Service(settings, [core])
    service.on_states(states(True))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(service)), base_url="http://t")
    sent, handle, decode = [], core.server.handle, m.decode
    core.server.handle = lambda ident, frame: sent.append(decode(frame)) or handle(ident, frame)

    def late(frame: bytes):  # each result spends 30 ms on its way back to the API process
        out = decode(frame)
        if isinstance(out, m.Done):
            out.sent -= 0.030
        return out

    monkeypatch.setattr(m, "decode", late)

    async def go():
        first = await client.post("/v1/generate", json={"steps": "auto", "deadline_ms": 500})
        for _ in range(3):
            await client.post("/v1/generate", json={"steps": 2})
        fixed = await client.post("/v1/generate", json={"steps": 3})
        last = await client.post("/v1/generate", json={"steps": "auto", "deadline_ms": 500})
        return first, fixed, last

    assert [r.status_code for r in run(go())] == [200, 200, 200]
    gens = [g for g in sent if isinstance(g, m.Generate)]
    assert gens[0].margin == 0.0  # nothing learned yet
    assert gens[-2].margin == 0.0  # fixed steps plan nothing
    assert 0.025 < gens[-1].margin < 0.25, gens[-1].margin  # about 30 ms learned, capped at half of 500
    (entry,) = service.entries.values()
    assert entry.way_back.mean > 0.025


def test_a_deadline_too_short_for_one_step_on_an_idle_core_is_504_not_a_retryable_429(stack):
    timer = stack.core.server.core.scheduler.timer
    for rows in (1, 128):
        for _ in range(50):
            timer.observe(rows, 1.0)  # one iteration: ~1 s, whatever the rows

    async def go():
        return await stack.client.post("/v1/generate", json={"steps": 2, "deadline_ms": 100})

    r = run(go())
    assert r.status_code == 504 and "retry-after" not in r.headers
    assert "deadline_ms" in r.json()["detail"]


def test_a_stale_reported_wait_does_not_keep_an_idle_core_from_serving(stack):
    """A large wait reported half a second ago (the core drained since, reporting only to other API
    processes): the request goes to the idle core and is served, not shed for seconds."""
    stack.core.reported.observe(5.0, at=time.monotonic() - 0.5)

    async def go():
        return await stack.client.post("/v1/generate", json={"deadline_ms": 1000})

    r = run(go())
    assert r.status_code == 200


def test_the_probe_port_answers_from_its_thread_and_fails_liveness_when_the_loop_stalls():
    import socket as socketlib

    from server.api_process.health import STALL_S, probe_port_answer, serve_probes

    service = SimpleNamespace(ready=True, state="ready", draining=False)
    now = time.monotonic()
    assert probe_port_answer(service, b"GET /healthz HTTP/1.1", now, now) == (200, {"status": "ok"})
    assert probe_port_answer(service, b"GET /healthz HTTP/1.1", now - STALL_S - 1, now)[0] == 503
    assert probe_port_answer(service, b"GET /readyz?x=1 HTTP/1.1", now, now)[0] == 200
    assert probe_port_answer(service, b"POST /healthz HTTP/1.1", now, now)[0] == 405
    assert probe_port_answer(service, b"GET /v1/models HTTP/1.1", now, now)[0] == 404
    assert probe_port_answer(service, b"garbage", now, now)[0] == 405
    service.ready, service.state = False, "draining"
    assert probe_port_answer(service, b"GET /readyz HTTP/1.1", now, now) == (503, {"status": "draining"})

    listener = socketlib.create_server(("127.0.0.1", 0))
    beat = [time.monotonic()]
    serve_probes(listener, service, beat, timeout=0.2)

    def ask(path: bytes) -> bytes:
        with socketlib.create_connection(listener.getsockname(), timeout=5) as c:
            c.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: k\r\n\r\n")
            return c.recv(4096)

    idle = socketlib.create_connection(listener.getsockname())  # a client that sends nothing...
    t0 = time.monotonic()
    assert ask(b"/healthz").startswith(b"HTTP/1.1 200 ")  # ...delays the next probe by its timeout at most
    assert time.monotonic() - t0 < 2.0
    beat[0] -= STALL_S + 1  # the event loop stopped turning
    assert ask(b"/healthz").startswith(b"HTTP/1.1 503 ")
    idle.close()
    listener.close()


@pytest.mark.parametrize("rows, steps", [("8", 1), (8, 1.5), (-1, 1), (1 << 30, 1), (8, 99), (True, 1)])
def test_a_malformed_shed_is_ignored_by_the_core(rows, steps):
    """The core trusts no one: a Shed that is not whole, positive and in range counts for nothing."""
    core = InProcessCore(ServerSettings(max_steps=4))
    core.server.handle(b"api", m.encode(m.Shed(rows=rows, steps=steps)))
    core.server.handle(b"api", m.encode(m.Shed(rows=8, steps=0)))  # a well-formed one still counts
    d = core.server.core.scheduler.demand
    assert d.fixed == 0 and d.auto == 8


def test_a_closed_api_connection_cancels_what_it_asked_for_and_nothing_is_sent_to_it():
    core = InProcessCore(ServerSettings(max_steps=4, max_samples=16))
    gen = lambda i: m.encode(m.Generate(i, 2, i, 4, [1, 2], 1.0, time.monotonic() + 10))
    for ident, rid in ((7, 1), (7, 2), (8, 1)):
        core.server.handle(ident, gen(rid))
    core.server.dropped(7)  # that API process's connection closed (link.Listener's on_close)
    core.server.cancel_closed()  # at the next receive(), between steps
    core.server.core.run_until_idle()
    outs = [(ident, type(m.decode(f)).__name__) for ident, f in core.server.outbox]
    assert outs == [(8, "Done")] and not core.server.jobs and not core.server.owner


def test_a_connection_closed_during_a_step_is_cancelled_after_it_and_sent_nothing():
    """A close found while a result is sent (inside the scheduler's update) ends nothing there: the
    requests of that connection are cancelled at the next receive(), and nothing more goes to it."""
    core = InProcessCore(ServerSettings(max_steps=4, max_samples=16))
    gen = lambda i, steps: m.encode(m.Generate(i, 2, i, steps, [1, 2], 1.0, time.monotonic() + 10))
    core.server.handle(7, gen(1, 1))
    core.server.handle(7, gen(2, 4))
    core.server.handle(8, gen(1, 4))
    core.server.dropped(7)
    core.server.core.step()  # one step: 7's 1-step request finishes, but 7 is closed: not sent
    assert core.server.outbox == [] and len(core.server.jobs) == 3 - 1
    core.server.cancel_closed()
    assert list(core.server.jobs) == [(8, 1)]
    core.server.core.run_until_idle()
    outs = [(ident, type(m.decode(f)).__name__) for ident, f in core.server.outbox]
    assert outs == [(8, "Done")] and not core.server.jobs and not core.server.owner


def test_a_close_found_by_a_send_inside_a_step_ends_that_connections_jobs_after_it():
    """The link finds a connection closed while a step's result is sent to it (on_close from inside the
    scheduler's update): the step finishes, its batch-mate's result still goes out, and the closed
    connection's other job is cancelled at the next receive()."""
    core = InProcessCore(ServerSettings(max_steps=4, max_samples=16))
    sent = []

    class ClosingLink:  # link.Listener's contract: send() to a closed connection calls on_close, False
        inbox = collections.deque()

        def send(self, ident, frame):
            if ident == 7:
                core.server.dropped(7)
                return False
            sent.append((ident, type(m.decode(frame)).__name__))
            return True

    core.server.link = ClosingLink()
    gen = lambda i, steps: m.encode(m.Generate(i, 2, i, steps, [1, 2], 1.0, time.monotonic() + 10))
    core.server.handle(7, gen(1, 1))
    core.server.handle(7, gen(2, 4))
    core.server.handle(8, gen(1, 1))
    core.server.core.step()  # 7's 1-step result closes 7 as it is sent; 8's, in the same update, goes out
    assert sent == [(8, "Done")] and (7, 2) in core.server.jobs
    core.server.receive()
    assert not core.server.jobs and not core.server.owner
    core.server.core.run_until_idle()
    assert sent == [(8, "Done")]


def test_a_result_past_the_links_bound_is_refused_naming_num_samples(stack, monkeypatch):
    monkeypatch.setattr("server.api_process.service.MAX_RESULT", 3 * 4 * 4)  # three toy samples (4 floats)
    r = run(stack.client.post("/v1/generate", json={"num_samples": 4, "output": "npy"}))
    assert r.status_code == 422 and "num_samples" in r.text and "at most 3" in r.text, r.text
    assert run(stack.client.post("/v1/generate", json={"num_samples": 3, "output": "npy"})).status_code == 200


def _waiting(deadline: float, disconnected=None):
    """Service._wait on a future nobody answers; (task, the rids it cancelled in the core)."""
    cancelled: list[int] = []
    entry = SimpleNamespace(client=SimpleNamespace(cancel=cancelled.append))
    fut = asyncio.get_running_loop().create_future()
    return asyncio.ensure_future(Service._wait(None, entry, 7, fut, deadline, disconnected)), cancelled


def test_wait_ends_at_the_deadline_and_on_disconnect():
    from server.api_process.service import ClientGone, TimedOut

    async def go():
        task, cancelled = _waiting(time.monotonic())
        with pytest.raises(TimedOut):
            await task
        assert cancelled == [7]
        gone = asyncio.Event()
        task, cancelled = _waiting(time.monotonic() + 60, gone.wait)
        await asyncio.sleep(0)
        gone.set()
        with pytest.raises(ClientGone):
            await task
        assert cancelled == [7]

    run(go())


def test_wait_lets_a_cancel_of_its_caller_through_even_as_its_deadline_fires():
    """The deadline timer and the caller's own cancel (a stream whose client left) in one loop turn, the
    timer first: the task ends cancelled, not TimedOut (nobody would retrieve that exception)."""

    async def go():
        task, cancelled = _waiting(time.monotonic())
        await asyncio.sleep(0)  # the wait's timer is set (0.05 s past the deadline)
        asyncio.get_running_loop().call_later(0.051, task.cancel)
        time.sleep(0.1)  # both are due in the loop's next turn, the timer first
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cancelled == [7]

    run(go())
