"""Every method trains on gmm8 for a few seconds and beats the fm teacher's 1-step Euler error by a
margin, measured against the exact flow; bad input (teacher, NaN) fails clearly and keeps the checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from flowmap import losses
from flowmap.checkpoint import load_model, save_checkpoint
from flowmap.data import gmm8_exact_flow, gmm8_variance_trace
from flowmap.nets import build_net
from flowmap.samplers import sample_flowmap, sample_heun, uniform_grid
from flowmap.teacher import TeacherError
from flowmap.train import TrainConfig, TrainingError, build_loss, train

torch.set_num_threads(1)
SMALL = dict(data="gmm8", width=64, depth=2, batch_size=256, lr=2e-3, ema=0.95, warmup=20, ckpt_every=10**6)
STEPS = 400
MARGIN = 0.5  # a method must reach at most half the teacher's 1-step Euler error


@pytest.fixture(scope="module")
def noise_and_exact():
    noise = torch.randn(1024, 2, generator=torch.Generator().manual_seed(0))
    return noise, gmm8_exact_flow(noise, 1.0, 0.0, steps=200)


def rel_mse(x, exact) -> float:
    return float(((x.double() - exact.double()) ** 2).sum(1).mean() / gmm8_variance_trace())


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "fm.safetensors"
    return train(TrainConfig(method="fm", steps=STEPS, out=str(out), **SMALL), progress=False)


@pytest.fixture(scope="module")
def teacher_euler(teacher, noise_and_exact):
    """The teacher's 1-step Euler error: the straight jump x - u(x, 1, 1)."""
    noise, exact = noise_and_exact
    net, one = load_model(str(teacher)).net, torch.ones(len(noise))
    with torch.no_grad():
        return rel_mse(noise - net(noise, one, one), exact)


def test_fm_teacher_ode_beats_its_one_step_euler(teacher, teacher_euler, noise_and_exact):
    noise, exact = noise_and_exact
    with torch.no_grad():
        heun = rel_mse(sample_heun(load_model(str(teacher)).net, noise, uniform_grid(16)), exact)
    assert heun < 0.25 * teacher_euler, (heun, teacher_euler)


@pytest.mark.parametrize("method", ["esd", "esdt", "lsd", "psd", "ct", "cd", "distill", "lmd", "emd"])
def test_method_beats_teacher_one_step_euler(method, teacher, teacher_euler, noise_and_exact, tmp_path):
    needs_teacher = "teacher" in losses.uses(losses.make_loss(method))
    cfg = TrainConfig(
        method=method,
        steps=STEPS,
        out=str(tmp_path / f"{method}.safetensors"),
        teacher=str(teacher) if needs_teacher else None,
        **SMALL,
    )
    model = load_model(str(train(cfg, progress=False)))
    assert model.config["method"] == method
    noise, exact = noise_and_exact
    with torch.no_grad():
        one_step = rel_mse(sample_flowmap(model.net, noise, uniform_grid(1)), exact)
    assert one_step < MARGIN * teacher_euler, (method, one_step, teacher_euler)


def test_teacher_errors_are_clear(tmp_path, teacher):
    with pytest.raises(TeacherError, match="pass --teacher"):
        train(TrainConfig(method="distill", steps=2, out=str(tmp_path / "a.safetensors"), **SMALL))
    with pytest.raises(TeacherError, match="no such checkpoint"):
        train(
            TrainConfig(
                method="cd",
                steps=2,
                teacher=str(tmp_path / "missing.safetensors"),
                out=str(tmp_path / "b.safetensors"),
                **SMALL,
            )
        )
    digits = tmp_path / "digits_teacher.safetensors"
    arch = {"name": "mlp", "shape": [1, 8, 8], "width": 16, "depth": 1, "num_classes": 10}
    save_checkpoint(digits, build_net(arch), {"arch": arch, "data": {"shape": [1, 8, 8], "num_classes": 10}})
    with pytest.raises(TeacherError, match=r"shape \[1, 8, 8\].*shape \[2\]"):
        train(
            TrainConfig(
                method="lmd", steps=2, teacher=str(digits), out=str(tmp_path / "c.safetensors"), **SMALL
            )
        )
    with pytest.raises(ValueError, match="does not use a teacher"):
        train(
            TrainConfig(
                method="esd", steps=2, teacher=str(teacher), out=str(tmp_path / "d.safetensors"), **SMALL
            )
        )
    with pytest.raises(ValueError, match="unknown method"):
        train(TrainConfig(method="nope", steps=2, out=str(tmp_path / "e.safetensors"), **SMALL))
    with pytest.raises(ValueError, match="drop --teacher-dt"):
        build_loss(TrainConfig(method="cd", teacher_dt=0.125, out=str(tmp_path / "f.safetensors"), **SMALL))
    assert build_loss(TrainConfig(method="distill", teacher_dt=0.125, out="g", **SMALL)).ode_dt == 0.125
    with pytest.raises(ValueError, match="pass --teacher-dt too"):
        build_loss(TrainConfig(method="distill", teacher_min_steps=8, out="g", **SMALL))
    with pytest.raises(ValueError, match="teacher_min_steps must be >= 1"):
        TrainConfig(method="distill", teacher_dt=0.125, teacher_min_steps=0, out="g", **SMALL)
    cfg = TrainConfig(method="distill", teacher_dt=0.125, teacher_min_steps=3, out="g", **SMALL)
    assert build_loss(cfg).min_steps == 3
    with pytest.raises(ValueError, match="drop --teacher-solver"):
        build_loss(TrainConfig(method="cd", teacher_solver="ab2", out="h", **SMALL))
    with pytest.raises(ValueError, match="one of heun, ab2"):
        TrainConfig(method="distill", teacher_solver="euler", out="h", **SMALL)
    assert build_loss(TrainConfig(method="distill", teacher_solver="ab2", out="h", **SMALL)).solver == "ab2"
    assert not any((tmp_path / n).exists() for n in ("a.safetensors", "b.safetensors", "c.safetensors"))


class NaNAfter(losses.FlowMatching):
    """Flow matching whose loss turns NaN from the 8th call on (call counter on the class)."""

    calls = 0

    def __call__(self, net, x0, y=None):
        NaNAfter.calls += 1
        loss = super().__call__(net, x0, y)
        return loss * float("nan") if NaNAfter.calls >= 8 else loss


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setitem(losses.LOSSES, "nan_after", NaNAfter)
    NaNAfter.calls = 0
    out = tmp_path / "nan.safetensors"
    # an explicit micro-batch: no memory probe, so the loss's calls are the training steps
    cfg = TrainConfig(
        method="nan_after", steps=20, out=str(out), **{**SMALL, "ckpt_every": 5, "micro_batch": 256}
    )
    with pytest.raises(TrainingError, match="at step 7.*last good checkpoint"):
        train(cfg, progress=False)
    model = load_model(str(out))  # written at step 5, untouched since
    assert model.config["train"]["steps"] == 5
    assert all(torch.isfinite(p).all() for p in model.net.state_dict().values())
    assert json.loads(out.with_suffix(".json").read_text())["method"] == "nan_after"


class InfBackward(torch.autograd.Function):
    """Identity forward, infinite backward: a finite loss with a non-finite gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


class InfGrad(losses.FlowMatching):
    def __call__(self, net, x0, y=None):
        return InfBackward.apply(super().__call__(net, x0, y))


def test_nonfinite_gradient_stops_before_a_checkpoint_is_poisoned(tmp_path, monkeypatch):
    monkeypatch.setitem(losses.LOSSES, "inf_grad", InfGrad)
    out = tmp_path / "inf.safetensors"
    with pytest.raises(TrainingError, match="gradient norm is .* at step 0"):
        train(
            TrainConfig(method="inf_grad", steps=3, out=str(out), **{**SMALL, "ckpt_every": 1}),
            progress=False,
        )
    assert not out.exists()
