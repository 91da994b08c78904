"""The processes a benchmark starts: a server or baseline in its own session on a free loopback port,
ready once a URL answers, stopped with all its children."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

import httpx

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A server process in its own session (stopped with all its children); stderr kept in a temp file."""

    def __init__(self, cmd: list[str], port: int, ready: str, timeout: float = 180, cwd: str | None = None):
        """`cwd`: run from that directory, its packages first on the path (another checkout's code)."""
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.err = tempfile.TemporaryFile("w+")
        env = ENV
        if cwd:  # that checkout first, then whatever path the caller had
            path = os.pathsep.join(filter(None, [os.path.abspath(cwd), ENV.get("PYTHONPATH", "")]))
            env = {**ENV, "PYTHONPATH": path}
        self.p = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=self.err,
            text=True,
            start_new_session=True,
        )
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.p.poll() is not None:
                raise RuntimeError(f"{' '.join(cmd[:5])} exited: {self.stderr_tail()}")
            try:
                if httpx.get(self.url + ready, timeout=1).status_code in (200, 405):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{' '.join(cmd[:5])} not ready after {timeout:.0f} s: {self.stderr_tail()}")

    def stderr_tail(self, n: int = 2000) -> str:
        self.err.seek(0)
        return self.err.read()[-n:]

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL to whatever of it is left after 30 s or its leader's exit."""
        try:
            os.killpg(self.p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.p.wait(30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.p.pid, signal.SIGKILL)  # stragglers (worker processes) must not load the next case
        except ProcessLookupError:
            pass
        self.p.wait()
        self.err.close()


def start_module(module: str, model: str, engine: str, ready: str, *flags: str) -> Proc:
    """`python -m MODULE --model M --engine E --port P FLAGS...` (free port), ready when `ready` answers."""
    port = free_port()
    cmd = [sys.executable, "-m", module, "--model", model, "--engine", engine, "--port", str(port), *flags]
    return Proc(cmd, port, ready)


def start_baselines(model: str, engine: str) -> Proc:
    return start_module("loadtests.baselines", model, engine, "/openapi.json")


def batch_stats(url: str) -> tuple[float, float]:
    """(sum, count) of flowmap_batch_samples over all models."""
    text = httpx.get(url + "/metrics").text
    get = lambda k: sum(
        float(v) for v in re.findall(rf"^flowmap_batch_samples_{k}{{[^}}]*}} (\S+)$", text, re.M)
    )
    return get("sum"), get("count")
