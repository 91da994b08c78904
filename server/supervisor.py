"""The supervisor: `flowmap serve`'s own process. It starts one engine-core process per model and N API
processes sharing one listening socket, tells the API processes which cores are up (CoreStates), restarts
whatever dies, and on SIGTERM/SIGINT drains: API processes first (they finish accepted requests), then
the cores. It imports neither torch nor FastAPI.

A model that cannot load or warm up stops the whole server with its reason (exit 2 for a user error such
as a bad checkpoint, 1 otherwise), unless it is one of several and its error is a user error (a bad file,
a user model failing its load checks): then it is reported (log, GET /v1/models) and the others serve.
After the server was ready, a dying core is restarted (the API answers 503 for the requests it held, and
readiness fails until it is back).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import zmq

from server.common import messages as m
from server.common.settings import ServerSettings
from server.common.spec import ModelSpec

log = logging.getLogger("flowmap.server")
TICK_MS = 50
PUBLISH_EVERY = 0.25  # seconds between periodic CoreStates (late subscribers catch up)
KILL_GRACE = 5.0


class StartupFailed(Exception):
    """A model's engine core could not start: args are (message, exit status)."""


@dataclass
class Child:
    """One child process and how to (re)start it."""

    role: str  # core | api
    index: int
    cmd: list[str]
    env: dict
    pass_fds: tuple = ()
    proc: subprocess.Popen | None = None
    up: bool = False  # cores: Ready received from the current process
    generation: int = 0
    info: ModelSpec | None = None  # cores: the model, from its last Ready
    failed: str = ""  # cores: why the model could not be loaded at start (never restarted then)
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = 0.0

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, env=self.env, pass_fds=self.pass_fds, start_new_session=True)
        self.up, self.started_at = False, time.monotonic()
        self.generation += 1

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass


def listen(host: str, port: int) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.create_server((host, port), family=family, backlog=4096)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.sock = listen(settings.host, settings.port)  # first: a port in use leaves nothing behind
        hp = settings.health_port
        self.health = None if hp is None else listen(settings.host, hp)  # probes' own port (health.py)
        self.run_dir = tempfile.mkdtemp(prefix="flowmap-")
        self.metrics_dir = os.path.join(self.run_dir, "metrics")
        os.makedirs(self.metrics_dir)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir  # before prometheus_client is imported
        from server.common.metrics import Metrics

        self.metrics = Metrics()
        self.ctx = zmq.Context()
        self.control = self.ctx.socket(zmq.PULL)
        self.control.bind(f"ipc://{self.run_dir}/control")
        self.states = self.ctx.socket(zmq.PUB)
        self.states.bind(f"ipc://{self.run_dir}/state")
        self.port = self.sock.getsockname()[1]
        self.cores = [self._core(i, spec) for i, spec in enumerate(settings.models)]
        self.apis = [self._api(i) for i in range(settings.api_processes())]
        self.stopping = 0  # signals received
        self.ready_once = False
        self.last_publish = 0.0

    # ------------------------------------------------------------ children
    def _env(self) -> dict:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir}
        env.setdefault("OMP_NUM_THREADS", str(self.settings.threads))
        key = self.settings.key()
        if key is not None:
            env["FLOWMAP_API_KEY"] = key
        return env

    def _settings_json(self) -> str:
        return json.dumps(self.settings.model_dump(mode="json", exclude={"api_key"}))

    def _core(self, i: int, spec: str) -> Child:
        env = self._env()
        env.pop("FLOWMAP_API_KEY", None)  # cores never see the key
        cmd = [sys.executable, "-m", "server.core_process", "--index", str(i), "--model", spec]
        cmd += ["--dir", self.run_dir, "--settings", self._settings_json(), "--parent", str(os.getpid())]
        return Child("core", i, cmd, env)

    def _api(self, i: int) -> Child:
        fd = self.sock.fileno()
        cmd = [sys.executable, "-m", "server.api_process", "--fd", str(fd), "--dir", self.run_dir]
        cmd += ["--settings", self._settings_json(), "--parent", str(os.getpid())]
        fds = (fd,)
        if self.health is not None:
            fds += (self.health.fileno(),)
            cmd += ["--health-fd", str(self.health.fileno())]
        return Child("api", i, cmd, self._env(), pass_fds=fds)

    # ------------------------------------------------------------ the loop
    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            for c in self.cores + self.apis:
                c.start()
            while not self.stopping:
                self._tick()
            return self._shutdown()
        except StartupFailed as e:
            message, code = e.args
            print(f"flowmap serve: error: {message}", file=sys.stderr)
            self._kill_all()
            return code
        except BaseException:  # never leave children running behind a dead supervisor
            self._kill_all()
            raise
        finally:
            self._cleanup()

    def _on_signal(self, sig: int, frame) -> None:
        self.stopping += 1
        if self.stopping > 1 and sig == signal.SIGINT:
            log.warning("second interrupt: stopping now")
            self._kill_all()
            shutil.rmtree(self.run_dir, ignore_errors=True)
            os._exit(1)

    def _tick(self, draining: bool = False) -> None:
        """Control messages, dead children, CoreStates. While API processes drain they are not restarted,
        but cores that die still are, so accepted requests can finish."""
        self._receive(TICK_MS)
        changed = self._reap(self.cores) | (False if draining else self._reap(self.apis))
        if changed or time.monotonic() - self.last_publish > PUBLISH_EVERY:
            self._publish()

    def _receive(self, timeout_ms: int) -> None:
        """Handle every control message (Ready, Fatal) that arrives within the timeout."""
        if not self.control.poll(timeout_ms):
            return
        while True:
            try:
                self._control(m.decode(self.control.recv(zmq.NOBLOCK)))
            except zmq.Again:
                return
            except m.WireError:
                continue

    def _control(self, msg) -> None:
        if not isinstance(msg, m.Ready | m.Fatal) or not 0 <= msg.index < len(self.cores):
            return
        core = self.cores[msg.index]
        if isinstance(msg, m.Fatal):
            if not self.ready_once and self._drop(core, msg):
                return
            if not self.ready_once:
                raise StartupFailed(f"model {self.settings.models[msg.index]}: {msg.message}", msg.code)
            log.error("model %s: engine core failed: %s", self.settings.models[msg.index], msg.message)
            return
        if core.proc is None or msg.pid != core.proc.pid:
            return  # from a process that is already gone
        core.up, core.info = True, msg.info
        self._check_ready()
        self._publish()

    def _drop(self, core: Child, msg: m.Fatal) -> bool:
        """At start, a model with a user error (code 2) among others that may still serve is reported and
        dropped (never restarted); True when it was."""
        others = [c for c in self.cores if c is not core and not c.failed]
        if msg.code != 2 or not others:
            return False
        core.failed = msg.message
        log.error(
            "model %s failed to load and is not served: %s", self.settings.models[core.index], msg.message
        )
        self._check_ready()
        self._publish()
        return True

    def _check_ready(self) -> None:
        if not self.ready_once and all(c.up or c.failed for c in self.cores):
            self.ready_once = True
            names = ", ".join(
                f"{c.info.name} ({c.info.engine} on {c.info.device})" for c in self.cores if c.up
            )
            log.info(
                "ready: %s on %s:%d, %d API processes", names, self.settings.host, self.port, len(self.apis)
            )

    def _reap(self, children: list[Child]) -> bool:
        """Restart children that died (with backoff); True when a core's state changed."""
        changed, now = False, time.monotonic()
        for c in children:
            if c.failed:  # dropped at start: its process exits, it is not restarted
                c.proc = None if c.proc is not None and not c.alive else c.proc
                continue
            if c.proc is None or c.alive:
                if c.proc is None and now >= c.next_start:
                    c.start()
                continue
            code, pid = c.proc.returncode, c.proc.pid
            c.proc = None
            self._process_dead(pid)
            if c.role == "core" and not self.ready_once:
                self._receive(1000)  # its Fatal, with the reason, may still be on the way
                if c.failed:  # reported and dropped: the others serve
                    continue
                raise StartupFailed(f"model {self.settings.models[c.index]}: engine core exited ({code})", 1)
            name = self._name(c)
            log.error("%s process %d (pid %d) exited with %s; restarting", name, c.index, pid, code)
            changed |= c.role == "core" and c.up
            c.up = False
            c.restarts += 1
            if c.role == "core":
                self.metrics.core_restarted(name)
            quick = now - c.started_at < 10  # died soon after starting: back off, up to 10 s
            c.next_start = now + (min(10.0, 0.5 * 2 ** min(c.restarts, 5)) if quick else 0.0)
        return changed

    def _name(self, c: Child) -> str:
        """A child's name in logs and metrics: its model's (the spec given until it was ever ready)."""
        if c.role != "core":
            return "api"
        return c.info.name if c.info is not None else self.settings.models[c.index]

    def _process_dead(self, pid: int) -> None:
        from server.common.metrics import mark_process_dead

        mark_process_dead(pid)

    def _publish(self) -> None:
        cores = [
            m.CoreState(up=c.up, generation=c.generation, info=c.info, failed=c.failed) for c in self.cores
        ]
        self.states.send(m.encode(m.CoreStates(cores, self.stopping > 0)))
        self.metrics.set_cores_up(sum(c.up for c in self.cores))
        self.last_publish = time.monotonic()

    # ------------------------------------------------------------ shutdown
    def _shutdown(self) -> int:
        """Drain: API processes finish what they accepted, then the cores stop."""
        log.info("draining %d API processes (timeout %.0f s)", len(self.apis), self.settings.drain_timeout_s)
        self.sock.close()  # once the API processes have let go of it too, new connections are refused
        if self.health is not None:
            self.health.close()  # likewise: the API processes answer probes (503) until they exit
        for a in self.apis:
            a.signal(signal.SIGTERM)
        end = time.monotonic() + self.settings.drain_timeout_s + 10
        while any(a.alive for a in self.apis) and time.monotonic() < end and self.stopping < 3:
            self._tick(draining=True)
        clean = not any(a.alive for a in self.apis)
        for c in self.apis + self.cores:
            c.signal(signal.SIGTERM if c.role == "core" else signal.SIGKILL)
        self._wait_all(KILL_GRACE)
        return 0 if clean else 1

    def _wait_all(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        for c in self.apis + self.cores:
            if c.proc is not None:
                try:
                    c.proc.wait(max(0.0, end - time.monotonic()))
                except subprocess.TimeoutExpired:
                    c.proc.kill()
                    c.proc.wait()

    def _kill_all(self) -> None:
        for c in self.apis + self.cores:
            c.signal(signal.SIGKILL)
        for c in self.apis + self.cores:
            if c.proc is not None:
                c.proc.wait()

    def _cleanup(self) -> None:
        self.sock.close()  # (closing twice is harmless)
        if self.health is not None:
            self.health.close()
        self.ctx.destroy(linger=0)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def run(settings: ServerSettings) -> int:
    """Serve until SIGTERM/SIGINT; 0 after a clean drain."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(settings.log_level.upper())
    return Supervisor(settings).run()
