"""A lean closed-loop HTTP/1.1 load generator (raw asyncio keep-alive sockets, bounded duration).

Lean on purpose: the server and the generator share the CPU, so the generator should cost as little
as possible, and the same generator drives every endpoint compared.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Result:
    concurrency: int
    seconds: float
    latencies: list[float] = field(default_factory=list)  # successful requests, seconds
    statuses: dict[int, int] = field(default_factory=dict)
    samples: int = 0  # samples in successful responses
    bytes: int = 0
    t_last: float = 0.0  # when the last counted response arrived

    @property
    def ok(self) -> int:
        return len(self.latencies)

    def rps(self) -> float:
        return self.ok / self.seconds

    def sps(self) -> float:
        return self.samples / self.seconds

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1e3 if self.latencies else float("nan")


def _request(path: str, body: bytes) -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % (path.encode(), len(body))
    ) + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = next(
        int(v) for k, _, v in (ln.partition(b":") for ln in lines[1:]) if k.lower() == b"content-length"
    )
    return status, await reader.readexactly(length)


async def _client(
    port: int,
    path: str,
    make_body: Callable[[int], dict],
    t_start: float,
    t_end: float,
    res: Result,
    seed: int,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = 0
    try:
        while (t0 := time.perf_counter()) < t_end:
            body = make_body(seed * 1_000_003 + i)
            i += 1
            writer.write(_request(path, json.dumps(body).encode()))
            status, payload = await _read_response(reader)
            t1 = time.perf_counter()
            if t0 < t_start:  # warm-up: not counted
                continue
            res.t_last = max(res.t_last, t1)
            res.statuses[status] = res.statuses.get(status, 0) + 1
            if status == 200:
                res.latencies.append(t1 - t0)
                res.samples += body.get("num_samples", 1)
                res.bytes += len(payload)
    finally:
        writer.close()


async def _run(port, path, make_body, concurrency, seconds, warmup) -> Result:
    now = time.perf_counter()
    res = Result(concurrency, seconds)
    await asyncio.gather(
        *(
            _client(port, path, make_body, now + warmup, now + warmup + seconds, res, k)
            for k in range(concurrency)
        )
    )
    res.seconds = max(seconds, res.t_last - (now + warmup))  # includes the last in-flight requests
    return res


def run(
    port: int,
    path: str,
    make_body: Callable[[int], dict],
    concurrency: int,
    seconds: float = 3.0,
    warmup: float = 0.5,
) -> Result:
    """Closed loop: `concurrency` connections send back-to-back for warmup + seconds; stats after warm-up."""
    return asyncio.run(_run(port, path, make_body, concurrency, seconds, warmup))
