"""Closed-loop POST load with wrk (Debian's C generator, one thread) or, without wrk, loadtests.httpload.

`run(port, path, bodies, connections, seconds)` cycles through `bodies` (JSON objects) and returns a
`Load` with successful requests/s and latency percentiles. wrk is driven with loadtests/wrk_post.lua,
whose done() prints one `WRK_RESULT {json}` line. Install wrk with `bash scripts/install_sysdeps.sh`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from loadtests import httpload

LUA = Path(__file__).with_name("wrk_post.lua")
MISSING = (
    "wrk not found: falling back to the Python load generator (loadtests/httpload.py), which shares the "
    "CPU with the servers and saturates sooner; install wrk with `bash scripts/install_sysdeps.sh`"
)


@dataclass
class Load:
    generator: str  # "wrk" or "httpload"
    connections: int
    seconds: float  # measured duration
    requests: int  # completed responses, any status
    ok: int  # 2xx responses
    p50_ms: float
    p99_ms: float
    errors: dict = field(default_factory=dict)  # socket errors, non-2xx, timeouts

    @property
    def req_s(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "req_s": self.req_s}


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def _wrk(port: int, path: str, bodies_file: str, connections: int, seconds: float) -> Load:
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "30s",
        "-s",
        str(LUA),
        f"http://127.0.0.1:{port}{path}",
        "--",
        bodies_file,
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("WRK_RESULT ")), None)
    if p.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({p.returncode}): {p.stderr.strip()[-1000:] or p.stdout[-1000:]}")
    r = json.loads(line.split(" ", 1)[1])
    errors = {k: v for k, v in r["errors"].items() if v}
    return Load(
        "wrk",
        connections,
        r["duration_us"] / 1e6,
        r["requests"],
        r["requests"] - r["errors"]["status"],
        r["p50_us"] / 1e3,
        r["p99_us"] / 1e3,
        errors,
    )


def _httpload(port: int, path: str, bodies: list[dict], connections: int, seconds: float) -> Load:
    r = httpload.run(port, path, lambda i: bodies[i % len(bodies)], connections, seconds, warmup=0.0)
    bad = {f"status_{k}": v for k, v in r.statuses.items() if k // 100 != 2}
    return Load("httpload", connections, r.seconds, sum(r.statuses.values()), r.ok, r.pct(50), r.pct(99), bad)


def run(
    port: int,
    path: str,
    bodies: list[dict],
    connections: int,
    seconds: float,
    warmup: float = 0.0,
    generator: str = "auto",
) -> Load:
    """Closed loop: `connections` keep-alive connections send the bodies in turn for `seconds` (after an
    uncounted `warmup`, if any). generator: "wrk", "httpload" or "auto" (wrk when installed)."""
    if generator == "auto":
        generator = "wrk" if have_wrk() else "httpload"
    if generator == "httpload":
        if warmup:
            _httpload(port, path, bodies, connections, warmup)
        return _httpload(port, path, bodies, connections, seconds)
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", prefix="wrk-bodies-") as f:
        f.write("".join(json.dumps(b, separators=(",", ":")) + "\n" for b in bodies))
        f.flush()
        if warmup:
            _wrk(port, path, f.name, connections, warmup)
        return _wrk(port, path, f.name, connections, seconds)


def pick_generator(wanted: str = "auto") -> str:
    """The generator to use, printing why when wrk is wanted or defaulted to but missing."""
    if wanted in ("auto", "wrk") and not have_wrk():
        print(MISSING, file=sys.stderr)
        return "httpload"
    return "wrk" if wanted == "auto" else wanted
