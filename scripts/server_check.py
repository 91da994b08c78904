#!/usr/bin/env python
"""The server on a device: lone-request latency and engine-core loop utilisation, one command.

    python scripts/server_check.py --device cuda [--model digits] [--seconds 5]

Starts `python -m server` (default engine for the device, default flags) on a free loopback port and:
1. sends 1-step, 1-sample requests one at a time: client p50, and the engine core's own compute
   time per request (the response's timings.compute_ms);
2. drives 16 concurrent clients of 8-sample 4-step requests for --seconds and reads /metrics before
   and after: utilisation = engine-call seconds / wall seconds (the share of the core's loop spent
   inside network calls and steps; the rest is scheduling, messaging and waiting for work).
scripts/gpu_check.py runs it as its "server" section and sets the ratio of the 1-step p50 to the bare
network forward. Works on CPU too (the CI box runs it that way; the numbers are then CPU numbers).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(device: str, model: str, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "server", "--model", model, "--device", device, "--port", str(port)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    end = time.monotonic() + 600
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server not ready within 600 s")


def lone_requests(port: int, n: int) -> dict:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps({"steps": 1, "num_samples": 1, "seed": 1, "output": "npy"})
    client, compute = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        c.request("POST", "/v1/generate", body, {"content-type": "application/json"})
        r = c.getresponse()
        data = json.loads(r.read())
        client.append(time.perf_counter() - t0)
        compute.append(data["timings"]["compute_ms"] / 1e3)
    skip = n // 10
    return {
        "p50_ms": 1e3 * statistics.median(client[skip:]),
        "core_compute_p50_ms": 1e3 * statistics.median(compute[skip:]),
    }


def engine_seconds(port: int) -> float:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    return sum(float(v) for v in re.findall(r"^flowmap_engine_call_seconds_sum\{[^}]*\} (\S+)$", text, re.M))


async def load(port: int, seconds: float, clients: int = 16) -> int:
    body = json.dumps({"steps": 4, "num_samples": 8, "output": "npy"}).encode()
    head = (
        f"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    end, done = time.monotonic() + seconds, 0

    async def one():
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < end:
            writer.write(head + body)
            await writer.drain()
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            done += status.startswith(b"HTTP/1.1 200")
        writer.close()

    await asyncio.gather(*(one() for _ in range(clients)))
    return done


def check(device: str = "cuda", model: str = "digits", seconds: float = 5.0, lone: int = 300) -> dict:
    port, log = free_port(), Path(f"/tmp/flowmap-server-check-{os.getpid()}.log")
    proc = start(device, model, port, log)
    try:
        out = lone_requests(port, lone)
        e0, t0 = engine_seconds(port), time.monotonic()
        ok = asyncio.run(load(port, seconds))
        busy, wall = engine_seconds(port) - e0, time.monotonic() - t0
        out.update({"loaded_requests": ok, "loop_utilisation": busy / wall, "device": device, "model": model})
        log.unlink()  # kept only when something failed
        return out
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="digits")
    p.add_argument("--seconds", type=float, default=5.0)
    a = p.parse_args(argv)
    print(json.dumps(check(a.device, a.model, a.seconds), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
