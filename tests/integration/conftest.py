"""Real server processes on 127.0.0.1 with free ports, and small random-weight checkpoints to serve."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import torch

from flowmap.checkpoint import save_checkpoint
from flowmap.nets import build_net

ROOT = Path(__file__).resolve().parents[2]
KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_checkpoint(path: Path, name: str, shape: list[int], classes: int) -> Path:
    """A random-weight flow map in the shipped format (the server does not care how good it is)."""
    torch.manual_seed(0)
    arch = {"name": "mlp", "shape": shape, "width": 64, "depth": 2, "num_classes": classes}
    data = {"name": name, "shape": shape, "num_classes": classes, "image": len(shape) == 3}
    config = {"name": name, "arch": arch, "data": data, "method": "esd", "guidance": {"baked_scale": 1.0}}
    save_checkpoint(path, build_net(arch), config)
    return path


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpt")
    return {
        "digits": make_checkpoint(d / "digits.safetensors", "digits", [1, 8, 8], 10),
        "gmm8": make_checkpoint(d / "gmm8.safetensors", "gmm8", [2], 0),
    }


class ServerProcess:
    """`python -m server ...` as a child process (slow_ms: with the test-only slow engine)."""

    def __init__(self, args: list[str], slow_ms: float | None = None, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        if slow_ms is not None:  # the test-only engine, by import path (the engine cores import it)
            full_env["FLOWMAP_TEST_DELAY_MS"] = str(slow_ms)
            full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests/integration"), str(ROOT)])
            args = ["--engine", "slow_engine:SlowEngine", *args]
        cmd = [sys.executable, "-m", "server", "--port", str(self.port), "--log-level", "warning", *args]
        # the log goes to a file: a pipe nobody reads fills up and blocks the server's log writes
        self.log = tempfile.NamedTemporaryFile("w+", prefix="flowmap-server-", suffix=".log")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        """Everything the server has logged so far."""
        with open(self.log.name) as f:
            return f.read()

    def wait_ready(self, timeout: float = 90.0) -> ServerProcess:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("server not ready in time")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


@pytest.fixture(scope="session")
def server(checkpoints):
    """The main test server: two models, eager engine, an API key."""
    s = ServerProcess(
        [
            "--model",
            str(checkpoints["digits"]),
            "--model",
            str(checkpoints["gmm8"]),
            "--engine",
            "eager",
            "--max-steps",
            "4",
            "--max-samples",
            "32",
            "--max-body-bytes",
            "8192",
        ],
        env={"FLOWMAP_API_KEY": KEY},
    ).wait_ready()
    yield s
    assert s.stop() == 0


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as c:
        yield c
