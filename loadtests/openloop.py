"""Open-loop load with SLOs: Poisson arrivals at a target rate, a weighted request mix, goodput.

Closed loop (a fixed number of clients sending back to back) hides queueing collapse: when the server
slows down the clients slow down with it. Here requests arrive on a Poisson schedule fixed before the
run, whatever the server does, and each has its own `slo_ms`. A request meets its SLO when it answers
200 within `slo_ms` of its *scheduled* arrival (generator lag and connection waits count against it).

    python -m loadtests.openloop --url http://127.0.0.1:8000 --mix loadtests/mixes/mixed.toml \
        --rate 200 --seconds 10 [--keep-samples DIR]

Reports per run: SLO attainment (met / sent), goodput (met per second), throughput, p50/p99 latency,
statuses and why those that were not 200 failed, and the generator's lag behind its schedule.
`ceiling()` measures the generator itself against GET /healthz (the cheapest route of the same server),
printed before every run.

Lean on purpose (the server and the generator share the CPU): raw asyncio streams on uvloop when
installed, keep-alive connections reused from a pool, request bytes built before the clock starts,
responses kept as bytes and parsed after the run. Debian's wrk (4.1) has no rate-limited open loop (its
Lua `delay()` is think time after each response on a fixed set of connections: closed loop again).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import random
import re
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from loadtests.mix import Mix, load_mix

NOT_DONE = -1  # status of a request with no answer by the end of the drain
CONN_ERROR = 0  # status of a request whose connection failed


@dataclass
class Plan:
    """What to send: arrival times (s from start), request bytes, mix entry per request, SLOs."""

    at: np.ndarray  # [R] float64
    requests: list[bytes]
    entry: np.ndarray  # [R] int: index into the mix's entries
    slo_ms: np.ndarray  # [R] float64
    bodies: list[dict] = field(default_factory=list)  # [R] the JSON bodies (empty for GETs)


@dataclass
class Outcome:
    """What happened: per request status, send and answer times (s from start), kept response bodies."""

    plan: Plan
    status: np.ndarray  # [R] int
    sent: np.ndarray  # [R] float64 (nan: never sent)
    done: np.ndarray  # [R] float64 (nan: no answer)
    payloads: list[bytes | None]
    connections: int = 0  # connections opened
    errors: dict[int, bytes] = field(default_factory=dict)  # request index -> the start of a non-200 body

    @property
    def latency_ms(self) -> np.ndarray:
        """[R] ms from the scheduled arrival to the answer (nan: none)."""
        return (self.done - self.plan.at) * 1e3


def poisson_times(rate: float, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival times in [0, seconds) of a Poisson process of `rate` per second (exponential gaps)."""
    if rate <= 0 or seconds <= 0:
        raise ValueError(f"rate and seconds must be > 0, got rate={rate} seconds={seconds}")
    n = int(rate * seconds * 1.2 + 10 * (rate * seconds) ** 0.5 + 10)  # enough gaps, almost surely
    t = np.cumsum(rng.exponential(1.0 / rate, n))
    while t[-1] < seconds:  # extend in the rare case the draw fell short
        t = np.concatenate([t, t[-1] + np.cumsum(rng.exponential(1.0 / rate, n))])
    return t[t < seconds]


def http_post(host: str, path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


def plan_mix(
    mix: Mix,
    rate: float,
    seconds: float,
    seed: int,
    num_classes: int,
    url: str,
    headers: dict | None = None,
) -> Plan:
    """Poisson arrivals; each request drawn from the mix by weight; seeds seed*10^6 + i; labels known."""
    rng = np.random.default_rng(seed)
    at = poisson_times(rate, seconds, rng)
    entry = mix.draw(len(at), random.Random(seed))
    u = urlsplit(url)
    bodies = mix.bodies(entry, seed * 1_000_000, num_classes)
    reqs = [
        http_post(u.netloc, u.path, json.dumps(b, separators=(",", ":")).encode(), headers) for b in bodies
    ]
    slo = np.array([mix.entries[e].slo_ms for e in entry], np.float64)
    return Plan(at, reqs, np.asarray(entry), slo, bodies)


# ---- the generator ------------------------------------------------------------------------------


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, connection stays open) of one HTTP/1.1 response with a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status, length, close = int(lines[0].split()[1]), 0, False
    for ln in lines[1:]:
        k, _, v = ln.partition(b":")
        k = k.strip().lower()
        if k == b"content-length":
            length = int(v)
        elif k == b"connection":
            close = v.strip().lower() == b"close"
    return status, await reader.readexactly(length), not close


class Pool:
    """Keep-alive connections to one host: an idle one is reused, else a new one is opened (up to `cap`,
    beyond which a request waits for the next idle connection). A connection idle for longer than
    `max_idle` is closed instead of reused: the server closes idle keep-alive connections after its
    `--keep-alive` (5 s), and a request written into one it is closing fails with no response, which
    would be counted against the server (status 0). Clients' pools do the same."""

    MAX_IDLE = 4.0  # seconds, under the server's default keep-alive of 5 s

    def __init__(self, host: str, port: int, cap: int):
        self.host, self.port, self.cap = host, port, cap
        self.idle: list = []
        self.open = self.opened = 0
        self.freed = asyncio.Condition()

    async def get(self):
        while True:
            while self.idle:
                conn, since = self.idle.pop()
                if time.monotonic() - since <= self.MAX_IDLE:
                    return conn
                self.open -= 1
                conn[1].close()
            if self.open < self.cap:
                self.open += 1
                self.opened += 1
                try:
                    return await asyncio.open_connection(self.host, self.port)
                except OSError:
                    self.open -= 1
                    raise
            async with self.freed:
                await self.freed.wait()

    async def put(self, conn, reuse: bool) -> None:
        if reuse:
            self.idle.append((conn, time.monotonic()))
        else:
            self.open -= 1
            conn[1].close()
        async with self.freed:
            self.freed.notify()


async def _one(pool: Pool, i: int, plan: Plan, out: Outcome, t0: float, keep: bool) -> None:
    clock = time.perf_counter
    try:
        conn = await pool.get()
    except OSError:
        out.status[i] = CONN_ERROR
        return
    out.sent[i] = clock() - t0
    reuse = False
    try:
        conn[1].write(plan.requests[i])
        status, body, reuse = await _read_response(conn[0])
        out.done[i], out.status[i] = clock() - t0, status
        if keep and status == 200:
            out.payloads[i] = body
        elif status != 200:
            out.errors[i] = body[:ERROR_BYTES]  # parsed after the run (`reasons`)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
        out.status[i] = CONN_ERROR
    finally:
        await pool.put(conn, reuse)


async def _drive(url: str, plan: Plan, cap: int, keep: bool, drain_s: float) -> Outcome:
    u = urlsplit(url)
    pool = Pool(u.hostname, u.port or 80, cap)
    r = len(plan.at)
    nan = np.full(r, np.nan)
    out = Outcome(plan, np.full(r, NOT_DONE), nan.copy(), nan.copy(), [None] * r)
    t0, tasks = time.perf_counter() + 0.01, []
    for i, at in enumerate(plan.at.tolist()):
        delay = t0 + at - time.perf_counter()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_one(pool, i, plan, out, t0, keep)))
    _, pending = await asyncio.wait(tasks, timeout=drain_s) if tasks else (None, [])
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for conn, _ in pool.idle:
        conn[1].close()
    out.connections = pool.opened
    return out


def drive(url: str, plan: Plan, cap: int = 512, keep: bool = False, drain_s: float = 30.0) -> Outcome:
    """Send `plan` to `url` open loop; wait up to drain_s after the last arrival for the answers."""
    try:
        import uvloop

        return uvloop.run(_drive(url, plan, cap, keep, drain_s))
    except ImportError:
        return asyncio.run(_drive(url, plan, cap, keep, drain_s))


# ---- the numbers --------------------------------------------------------------------------------


def summarize(out: Outcome, warmup: float = 0.0) -> dict:
    """SLO attainment, goodput and latency over the requests scheduled at or after `warmup` seconds."""
    p = out.plan
    sel = p.at >= warmup
    window = float(p.at[sel].max() - warmup) if sel.any() else 0.0
    s = stats(out.status[sel], out.latency_ms[sel], p.slo_ms[sel], window, (out.sent - p.at)[sel])
    s["reasons"] = reasons(out, np.flatnonzero(sel))
    return s


ERROR_BYTES = 512  # of a non-200 body kept: its message, not a peer's whole traceback
NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")  # 312, 1.5; not the 16 of bf16 or the 1 of v1
UNANSWERED = {CONN_ERROR: "connection error", NOT_DONE: "no answer"}


def reason(status: int, body: bytes) -> str:
    """One answer that was not a 200, as "STATUS message" with its numbers as N, on one line of at most
    200 characters, so that answers refused for the same reason count together (the server's 429s say
    which bound refused them, and whether the API process or the engine core did: docs/loadtests.md)."""
    try:
        err = json.loads(body)
        msg = err.get("detail") or err.get("error") or ""
        if isinstance(msg, list) and msg and isinstance(msg[0], dict):  # FastAPI's 422: [{loc, msg}, ...]
            msg = msg[0].get("msg", msg[0])
        if isinstance(msg, dict):
            msg = msg.get("message") or json.dumps(msg)
    except (ValueError, AttributeError, RecursionError):  # not JSON, or JSON but not an object
        msg = body.decode(errors="replace")
    text = " ".join(NUMBER.sub("N", str(msg)).split())[:200]
    return f"{status} {text}".strip()


def reasons(out: Outcome, sel: np.ndarray) -> dict[str, int]:
    """Counts of why the selected requests got no 200 (`reason`; connection errors and requests with no
    answer by the end of the drain too, so the counts sum to the non-200 statuses), most first."""
    got = Counter()
    for i in sel.tolist():
        status = int(out.status[i])
        if status in UNANSWERED:
            got[UNANSWERED[status]] += 1
        elif status != 200:
            got[reason(status, out.errors.get(i, b""))] += 1
    return dict(got.most_common())


def stats(status: np.ndarray, latency_ms: np.ndarray, slo_ms: np.ndarray, window: float, lag) -> dict:
    """The report of one run. A request meets its SLO iff it answered 200 within its slo_ms; attainment =
    met / sent; goodput = met / window (seconds spanned by the arrivals); throughput = 200s / window."""
    sent = len(status)
    ok = status == 200
    met = ok & (latency_ms <= slo_ms)
    lat = latency_ms[ok]
    pct = lambda q: float(np.percentile(lat, q)) if len(lat) else float("nan")
    codes, counts = np.unique(status, return_counts=True)
    lag = np.asarray(lag)[np.isfinite(lag)] * 1e3
    return {
        "sent": sent,
        "offered_rps": sent / window if window else float("nan"),
        "ok": int(ok.sum()),
        "met": int(met.sum()),
        "attainment": float(met.mean()) if sent else float("nan"),
        "goodput_rps": float(met.sum() / window) if window else float("nan"),
        "throughput_rps": float(ok.sum() / window) if window else float("nan"),
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "statuses": {str(int(c)): int(n) for c, n in zip(codes, counts, strict=True)},
        "lag_p99_ms": float(np.percentile(lag, 99)) if len(lag) else float("nan"),
    }


def ceiling(url: str, rate: float = 20000, seconds: float = 2.0, cap: int = 64) -> dict:
    """The generator's own ceiling: GET /healthz of the same server at a rate far above what it can send;
    the answers per second are what this generator (and the server's HTTP front) can reach at all."""
    u = urlsplit(url)
    at = np.arange(0.0, seconds, 1.0 / rate)
    get = f"GET /healthz HTTP/1.1\r\nHost: {u.netloc}\r\n\r\n".encode()
    plan = Plan(at, [get] * len(at), np.zeros(len(at), int), np.full(len(at), 1e9))
    t = time.perf_counter()
    out = drive(url, plan, cap=cap, drain_s=30)
    wall = time.perf_counter() - t
    ok = int((out.status == 200).sum())
    return {"healthz_rps": ok / wall, "requests": ok, "seconds": wall, "connections": cap}


def npy_decode(text: str) -> np.ndarray:
    """The base64 .npy of a response's "array" -> float32 [n, *shape]."""
    return np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False)


def responses(out: Outcome) -> list[dict]:
    """Per kept 200 response (npy output): request index, seed, steps asked and used, labels, samples."""
    got = []
    for i, body in enumerate(out.payloads):
        if body is None:
            continue
        r = json.loads(body)
        if r.get("array") is None:
            raise ValueError('keeping samples needs "output": "npy" in every mix entry')
        asked = out.plan.bodies[i]["steps"]
        x = npy_decode(r["array"])
        got.append(
            {
                "i": i,
                "seed": r["seed"],
                "asked": asked,
                "steps": r["steps"],
                "labels": r["class_labels"],
                "x": x,
            }
        )
    return got


def model_info(url: str) -> dict:
    """The default model's entry of GET /v1/models (name, shape, num_classes)."""
    with urllib.request.urlopen(url + "/v1/models", timeout=10) as r:
        got = json.loads(r.read())
    return next(m for m in got["models"] if m["name"] == got["default"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--mix", default=str(Path(__file__).with_name("mixes") / "mixed.toml"))
    p.add_argument("--rate", type=float, required=True, help="offered requests per second")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of arrivals sent but not counted")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the summary here too")
    a = p.parse_args(argv)
    mix = load_mix(a.mix)
    print(f"generator ceiling: {ceiling(a.url)['healthz_rps']:.0f} req/s (GET /healthz)", file=sys.stderr)
    classes = model_info(a.url)["num_classes"]
    plan = plan_mix(mix, a.rate, a.seconds + a.warmup, a.seed, classes, a.url + "/v1/generate")
    s = summarize(drive(a.url, plan), a.warmup)
    print(json.dumps(s, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(s, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
