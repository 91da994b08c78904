"""Re-running `flowmap train`: same config continues the saved state, another config is refused."""

from __future__ import annotations

import pytest
import torch

import flowmap.train as train_mod
from flowmap.checkpoint import load_checkpoint
from flowmap.cli import main

torch.set_num_threads(1)
REAL_STEP = train_mod._step

COMMON = ["train", "--data", "gmm8", "--method", "fm", "--width", "16", "--depth", "1", "--no-progress"]
COMMON += ["--lr-schedule", "constant", "--warmup", "1", "--ckpt-every", "5", "--steps", "10"]


def _count_steps(monkeypatch, stop_at: int | None = None) -> list[int]:
    """Record the step numbers trained; raise KeyboardInterrupt (a kill) at `stop_at`."""
    seen = []

    def step(cfg, net, opt, loss, i, out, ctx):
        if i == stop_at:
            raise KeyboardInterrupt
        seen.append(i)
        REAL_STEP(cfg, net, opt, loss, i, out, ctx)

    monkeypatch.setattr(train_mod, "_step", step)
    return seen


def _same_weights(a, b) -> bool:
    sa, sb = load_checkpoint(a).net.state_dict(), load_checkpoint(b).net.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_rerun_after_a_kill_continues_and_matches_an_uninterrupted_run(tmp_path, monkeypatch, capsys):
    assert main([*COMMON, "--out", str(tmp_path / "a.safetensors")]) == 0
    _count_steps(monkeypatch, stop_at=7)
    assert main([*COMMON, "--out", str(tmp_path / "b.safetensors")]) == 130  # killed after the step-5 save
    seen = _count_steps(monkeypatch)
    assert main([*COMMON, "--out", str(tmp_path / "b.safetensors")]) == 0
    assert seen == [5, 6, 7, 8, 9]
    assert "resuming" in capsys.readouterr().err
    assert _same_weights(tmp_path / "a.safetensors", tmp_path / "b.safetensors")


def test_another_config_is_refused_unless_told(tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    assert main([*COMMON, "--out", str(out)]) == 0
    state = tmp_path / "m.state.safetensors"
    before = state.read_bytes()
    assert main([*COMMON, "--lr", "0.002", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "another config" in err and "lr 0.001 -> 0.002" in err and "--overwrite" in err
    assert "Traceback" not in err and state.read_bytes() == before
    assert main([*COMMON, "--lr", "0.002", "--overwrite", "--out", str(out)]) == 0
    assert main([*COMMON, "--lr", "0.002", "--out", str(tmp_path / "fresh.safetensors")]) == 0
    assert _same_weights(out, tmp_path / "fresh.safetensors")  # started over, not continued


def test_threads_and_checkpoint_interval_do_not_count_as_another_config(tmp_path, monkeypatch):
    out = str(tmp_path / "m.safetensors")
    _count_steps(monkeypatch, stop_at=7)
    assert main([*COMMON, "--out", out]) == 130
    seen = _count_steps(monkeypatch)
    assert main([*COMMON, "--threads", "2", "--ckpt-every", "2", "--out", out]) == 0
    assert seen == [5, 6, 7, 8, 9]


def test_resume_and_overwrite_together_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([*COMMON, "--resume", "--overwrite", "--out", str(tmp_path / "x.safetensors")])
    assert e.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_resume_into_another_architecture_is_a_clear_error(tmp_path, capsys):
    out = str(tmp_path / "m.safetensors")
    assert main([*COMMON, "--out", out]) == 0
    assert main([*COMMON, "--width", "32", "--resume", "--out", out]) == 2
    assert "cannot continue it with this config" in capsys.readouterr().err
