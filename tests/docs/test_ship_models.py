"""`make models` runs the training commands README.md ("Shipped models") documents, and only those:
scripts/ship_models.sh run dry (its `flowmap` and `python` replaced by `echo`) prints them."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\nmake models.*?```", text, re.S).group(0).replace("\\\n", " ")
    return [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("flowmap train ")]


def script_commands(nproc: int) -> list[list[str]]:
    env = {**os.environ, "FLOWMAP": "echo", "PYTHON": "echo", "NPROC": str(nproc)}
    done = subprocess.run(
        ["bash", "scripts/ship_models.sh", "runs/ship"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    out = []
    for line in done.stdout.splitlines():
        words = shlex.split(line)
        if words[:2] == ["-m", "torch.distributed.run"]:  # a data-parallel stage: `-m flowmap train ...`
            words = words[words.index("flowmap") + 1 :]
        if words[:1] == ["train"]:
            out.append(words)
    return out


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("nproc", [1, 2])
def test_ship_models_runs_the_readme_training_commands(nproc):
    documented, ran = readme_commands(), script_commands(nproc)
    assert len(documented) == 7  # mnist 2, gmm8 2, digits 2, digits_uncond 1
    assert sorted(map(tuple, ran)) == sorted(map(tuple, documented))
