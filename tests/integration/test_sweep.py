"""The sweep end to end on the shipped digits model (a server it starts itself, a short open-loop run),
and batch invariance end to end: what the server returned under load equals what the library computes for
the same seeds, steps and classes, and so do its scores (flowmap.quality.score_images, eval's scorer)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from loadtests import score
from tests.integration.conftest import ROOT


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    cmd = [sys.executable, "-m", "loadtests.sweep", "--model", "digits", "--steps", "2,auto", "--rates", "40"]
    cmd += ["--seconds", "2", "--warmup", "0.5", "--per-class", "10", "--eval-seeds", "0", "--out", str(out)]
    cmd += ["--keep-samples"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads((out / "sweep.json").read_text()), done


def test_sweep_writes_json_markdown_plots_and_scores_every_cell(swept):
    out, result, done = swept
    assert {(r["steps"], r["rate"]) for r in result["rows"]} == {("2", 40.0), ("auto", 40.0)}
    for r in result["rows"]:
        assert r["ok"] > 10 and r["quality"]["n"] == 100  # 10 per class
        assert {"fd", "fd_pixel", "class_acc", "recall", "diversity"} <= set(r["quality"])
        assert r["max_abs_vs_library"] < 1e-4
    assert result["rows"][0]["chosen_steps"][1] == result["rows"][0]["ok"]  # fixed 2 steps: all at 2
    assert result["meta"]["ceiling"]["healthz_rps"] > 0
    assert set(result["eval"]) == {"2"} and result["eval"]["2"][0]["n"] == 100
    for name in ("sweep.md", "steps.png", "load.png", "auto.png"):
        assert (out / name).stat().st_size > 0
    assert "Generator ceiling" in (out / "sweep.md").read_text() and "| auto |" in done.stdout


def test_server_samples_and_their_scores_equal_the_library(swept):
    from flowmap.checkpoint import load_model

    out, _, _ = swept
    kept = score.load(out / "samples" / "r0_steps2_rate40.npz")
    assert len(kept) > 10 and all(r["steps"] == 2 for r in kept)
    lib = score.library_samples(load_model("digits"), kept)
    for x, r in zip(lib, kept, strict=True):
        np.testing.assert_allclose(r["x"], x, rtol=0, atol=1e-4)
    served = score.pool(kept, 10)
    ours = score.pool([{**r, "x": x} for r, x in zip(kept, lib, strict=True)], 10)
    np.testing.assert_array_equal(served["labels"], ours["labels"])
    a, b = score.quality(served["x"], served["labels"]), score.quality(ours["x"], ours["labels"])
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k
    # and the check can fail: other seeds give other samples and another FD
    other = score.library_samples(load_model("digits"), [{**r, "seed": r["seed"] + 1} for r in kept])
    assert max(float(np.abs(x - r["x"]).max()) for x, r in zip(other, kept, strict=True)) > 0.1
