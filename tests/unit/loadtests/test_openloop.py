"""Open-loop load math: the Poisson schedule, SLO attainment and goodput, request mixes."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from loadtests import openloop
from loadtests.mix import MixError, load_mix, parse_mix


def test_poisson_times_have_the_rate_and_exponential_gaps():
    rng = np.random.default_rng(0)
    t = openloop.poisson_times(200.0, 50.0, rng)
    assert t.min() >= 0 and t.max() < 50 and np.all(np.diff(t) > 0)
    assert len(t) == pytest.approx(200 * 50, rel=0.03)  # sd of a Poisson count: sqrt(10000) = 1%
    gaps = np.diff(t)
    assert gaps.mean() == pytest.approx(1 / 200, rel=0.03)
    assert gaps.std() == pytest.approx(1 / 200, rel=0.05)  # exponential: sd = mean (a fixed rate has 0)
    counts = np.bincount((t / 0.1).astype(int))  # arrivals per 100 ms window: Poisson(20)
    assert counts.var() == pytest.approx(counts.mean(), rel=0.15)


def test_poisson_times_refuse_nonpositive_rate():
    with pytest.raises(ValueError, match="rate and seconds"):
        openloop.poisson_times(0, 1, np.random.default_rng(0))


def test_stats_attainment_and_goodput_count_only_timely_200s():
    status = np.array([200, 200, 200, 429, 504, openloop.CONN_ERROR, openloop.NOT_DONE, 200])
    latency = np.array([10.0, 99.9, 100.1, 1.0, 50.0, np.nan, np.nan, 30.0])
    slo = np.array([100.0, 100, 100, 100, 100, 100, 100, 20])
    s = openloop.stats(status, latency, slo, window=4.0, lag=np.zeros(8))
    # met: 10 <= 100, 99.9 <= 100; not 100.1 > 100; not the 429/504/errors; not 30 > its own SLO of 20
    assert (s["sent"], s["ok"], s["met"]) == (8, 4, 2)
    assert s["attainment"] == 2 / 8
    assert s["goodput_rps"] == 2 / 4.0 and s["throughput_rps"] == 4 / 4.0 and s["offered_rps"] == 8 / 4.0
    assert s["statuses"] == {"-1": 1, "0": 1, "200": 4, "429": 1, "504": 1}
    assert s["p50_ms"] == pytest.approx(np.percentile([10, 99.9, 100.1, 30], 50))


def test_summarize_drops_the_warmup_and_measures_latency_from_the_schedule():
    at = np.array([0.0, 0.5, 1.0, 2.0, 3.0])
    plan = openloop.Plan(at, [b""] * 5, np.zeros(5, int), np.full(5, 100.0))
    out = openloop.Outcome(
        plan, np.full(5, 200), at + 0.01, at + np.array([0.5, 0.5, 0.05, 0.2, 0.01]), [None] * 5
    )
    s = openloop.summarize(out, warmup=1.0)
    assert s["sent"] == 3 and s["met"] == 2  # 50 ms and 10 ms met; 200 ms not; the warm-up's two ignored
    assert s["goodput_rps"] == 2 / 2.0  # window: arrivals from 1.0 to 3.0 s


MIX = {
    "slo_ms": 80,
    "request": [
        {"weight": 3, "steps": 4, "num_samples": 3},
        {"weight": 1, "steps": "auto", "num_samples": 2, "classes": 7, "slo_ms": 200},
    ],
}


def test_mix_draws_by_weight_and_cycles_classes_across_requests():
    mix = parse_mix(MIX)
    picks = mix.draw(20000, random.Random(0))
    assert np.mean(np.array(picks) == 0) == pytest.approx(0.75, abs=0.015)
    bodies = mix.bodies([0, 1, 0, 0], seed_base=100, num_classes=4)
    assert [b["seed"] for b in bodies] == [100, 101, 102, 103]
    assert bodies[0]["class_label"] == [0, 1, 2] and bodies[2]["class_label"] == [3, 0, 1]  # continues
    assert bodies[1]["class_label"] == 7 and bodies[1]["deadline_ms"] == 200  # auto: deadline = its SLO
    assert "deadline_ms" not in bodies[0] and bodies[0]["output"] == "npy"
    assert [e.slo_ms for e in mix.entries] == [80, 200]


def test_with_steps_replaces_steps_and_gives_auto_a_deadline():
    mix = parse_mix(MIX)
    auto = mix.with_steps("auto")
    assert [e.steps for e in auto.entries] == ["auto", "auto"]
    assert [e.deadline_ms for e in auto.entries] == [80, 200]
    assert [e.deadline_ms for e in mix.with_steps(2).entries] == [None, 200]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({}, "at least one"),
        ({"request": [{"steps": 0}]}, "steps must be an integer"),
        ({"request": [{"steps": "fast"}]}, "steps must be an integer"),
        ({"request": [{"weight": -1}]}, "weight must be a number > 0"),
        ({"request": [{"num_samples": True}]}, "num_samples must be an integer"),
        ({"request": [{"classes": "many"}]}, "classes must be"),
        ({"request": [{"stepz": 2}]}, "unknown field"),
        ({"slo_m": 5, "request": [{}]}, r"unknown top-level field\(s\) \['slo_m'\]"),
        ({"request": [{"output": "jpg"}]}, "output must be"),
    ],
)
def test_bad_mixes_name_the_field(bad, message):
    with pytest.raises(MixError, match=message):
        parse_mix(bad)


def test_shipped_mixes_load_and_json_mixes_too(tmp_path):
    assert load_mix("sweep").entries[0].num_samples == 8
    assert {e.steps for e in load_mix("mixed").entries} == {1, 2, 4, "auto"}
    p = tmp_path / "m.json"
    p.write_text(json.dumps(MIX))
    assert load_mix(p).entries[1].classes == 7
    with pytest.raises(MixError, match="not found"):
        load_mix(tmp_path / "nope.toml")


def test_pool_takes_per_class_samples_spread_over_the_run():
    from loadtests import score

    recs = [
        {"x": np.full((2, 1, 8, 8), i, np.float32), "labels": [0, 1], "steps": 4 - i // 25}
        for i in range(100)
    ]
    got = score.pool(recs, per_class=10)
    assert np.bincount(got["labels"]).tolist() == [10, 10]
    first = got["x"][got["labels"] == 0][:, 0, 0, 0]
    assert first[0] == 0 and first[-1] == 99  # from the first request to the last, not the first ten
    assert set(got["steps"].tolist()) == {1, 2, 3, 4}


def test_the_connection_pool_never_reuses_a_connection_idle_past_the_server_keep_alive(monkeypatch):
    """A server closing idle keep-alive connections (as uvicorn does after 5 s): a request written into a
    connection it closed fails with no answer, which the load test would count against the server."""
    import asyncio

    monkeypatch.setattr(openloop.Pool, "MAX_IDLE", 0.05)

    async def main():
        async def serve(reader, writer):
            while True:
                try:
                    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.1)  # keep-alive: 0.1 s
                except (asyncio.TimeoutError, asyncio.IncompleteReadError):
                    writer.close()
                    return
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        pool = openloop.Pool("127.0.0.1", server.sockets[0].getsockname()[1], 4)
        statuses = []
        for _ in range(2):
            conn = await pool.get()
            conn[1].write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, reuse = await openloop._read_response(conn[0])
            statuses.append(status)
            await pool.put(conn, reuse)
            await asyncio.sleep(0.3)  # past the server's keep-alive: it closed the connection
        server.close()
        return statuses, pool.opened

    statuses, opened = asyncio.run(main())
    assert statuses == [200, 200] and opened == 2


@pytest.mark.parametrize(
    "body, want",
    [
        (
            b'{"detail": "overloaded: predicted queue wait 312 ms is past the server\'s bound"}',
            "429 overloaded: predicted queue wait N ms is past the server's bound",
        ),
        (b'{"error": "queue full"}', "429 queue full"),
        (b'{"error": {"message": "wait 1.5 s", "type": "x"}}', "429 wait N s"),
        (b"<html>busy</html>", "429 <html>busy</html>"),
        (b'{"detail": [{"loc": ["body", "steps"], "msg": "must be <= 4"}]}', "429 must be <= N"),
        (b'{"error": {"type": "x"}}', '429 {"type": "x"}'),
        (b"[1, 2]", "429 [N, N]"),
        (b"", "429"),
        (b"Traceback:\n  line 12\n\xff" + b"x" * 500, "429 Traceback: line N \ufffd" + "x" * 181),
        (b'{"error": "bf16 engine down on /v1/generate"}', "429 bf16 engine down on /v1/generate"),
        (b"[" * 100_000 + b"]" * 100_000, "429 " + "[" * 200),
    ],
)
def test_reason_names_a_refusal_by_its_message_with_the_numbers_taken_out(body, want):
    assert openloop.reason(429, body) == want


def test_drive_counts_the_answers_that_were_not_200_by_reason_after_the_warmup():
    """A refusal's message says which bound refused it and where (the API process or the core): the
    report counts them apart, so an A/B can tell a stale shed from a real one."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    answers = iter(
        [(429, "wait 900 ms is past the bound"), (200, "")]
        + [(429, "wait 1 ms is past the bound")] * 2
        + [(429, "predicted finish in 5 ms is past the deadline"), (200, "")]
    )

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the server

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            code, msg = next(answers)
            body = json.dumps({"detail": msg}).encode() if code != 200 else b"{}"
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        req = openloop.http_post(f"127.0.0.1:{srv.server_address[1]}", "/v1/generate", b"{}")
        at = np.arange(6) * 0.05  # one at a time, in order: the first is the warm-up's
        plan = openloop.Plan(at, [req] * 6, np.zeros(6, int), np.full(6, 1e4))
        s = openloop.summarize(openloop.drive(url, plan, cap=1), warmup=0.04)
    finally:
        srv.shutdown()
    assert s["statuses"] == {"200": 2, "429": 3}
    assert s["reasons"] == {
        "429 wait N ms is past the bound": 2,
        "429 predicted finish in N ms is past the deadline": 1,
    }


def test_reasons_count_every_answer_that_was_not_200_so_they_sum_to_the_statuses():
    at = np.arange(5) * 0.1
    plan = openloop.Plan(at, [b""] * 5, np.zeros(5, int), np.full(5, 100.0))
    status = np.array([429, 200, openloop.CONN_ERROR, openloop.NOT_DONE, 429])
    out = openloop.Outcome(
        plan, status, at, at + 0.01, [None] * 5, errors={0: b"{}", 4: b'{"detail": "full 5"}'}
    )
    s = openloop.summarize(out, warmup=0.05)  # the first (a 429) is the warm-up's
    assert s["reasons"] == {"connection error": 1, "no answer": 1, "429 full N": 1}
    assert sum(s["reasons"].values()) == sum(n for code, n in s["statuses"].items() if code != "200")
