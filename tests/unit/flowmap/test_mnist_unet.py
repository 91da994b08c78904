"""mnist data, the multi-resolution U-Net, bf16 JVP targets and micro-batched training."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flowmap import memory
from flowmap.data import MNIST_PATH, MNIST_SHA256, load_data
from flowmap.losses import eulerian_target, low_precision_jvp
from flowmap.nets import UNet
from flowmap.train import TrainConfig, backward, train

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[3]


def test_mnist_is_built_in_with_a_fixed_stratified_split():
    d = load_data("mnist")
    assert hashlib.sha256(MNIST_PATH.read_bytes()).hexdigest() == MNIST_SHA256
    assert (d.name, d.shape, d.num_classes, d.image) == ("mnist", [1, 28, 28], 10, True)
    assert len(d.x_train) == 7500 and len(d.x_test) == 2500
    assert d.x_train.min() == -1 and d.x_train.max() == 1  # pixels / 127.5 - 1
    # stratified: each class's share of the test split is its share of the whole within one image
    whole = torch.cat([d.y_train, d.y_test]).bincount().double()
    assert (d.y_test.bincount() - whole * 0.25).abs().max() <= 1
    again = load_data("mnist")
    assert torch.equal(again.x_test, d.x_test) and torch.equal(again.y_train, d.y_train)


def test_build_script_rebuilds_the_same_bytes_from_the_npm_layout(tmp_path):
    digits = tmp_path / "package" / "src" / "digits"
    digits.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for c in range(10):
        flat = np.round(rng.random(2 * 28 * 28), 3).tolist()
        (digits / f"{c}.json").write_text(json.dumps({"data": flat}))
    outs = [tmp_path / "a.npz", tmp_path / "b.npz"]
    for out in outs:
        cmd = [
            sys.executable,
            str(ROOT / "scripts" / "build_mnist.py"),
            str(tmp_path / "package"),
            "--out",
            str(out),
        ]
        subprocess.run(cmd, check=True, capture_output=True)
    assert outs[0].read_bytes() == outs[1].read_bytes()
    with np.load(outs[0], allow_pickle=False) as f:
        assert f["x"].shape == (20, 28, 28) and f["x"].dtype == np.uint8
        assert f["y"].tolist() == [c for c in range(10) for _ in range(2)]


@pytest.mark.parametrize(
    ("shape", "mults"), [([1, 28, 28], "1,2,2"), ([1, 8, 8], "1,2"), ([3, 12, 12], "1,1,2")]
)
def test_unet_keeps_the_shape_and_rows_independent(shape, mults):
    torch.manual_seed(0)
    net = UNet(shape, width=16, mults=mults, num_classes=10).eval()
    x, y = torch.randn(3, *shape), torch.tensor([1, 2, 10])
    u = net(x, torch.tensor([1.0, 0.5, 0.3]), torch.tensor([0.0, 0.2, 0.3]), y)
    assert u.shape == x.shape
    alone = net(x[1:2], torch.tensor([0.5]), torch.tensor([0.2]), y[1:2])
    torch.testing.assert_close(alone, u[1:2], atol=1e-5, rtol=1e-5)


def test_unet_goes_down_to_the_lowest_resolution_with_attention_there():
    net = UNet([1, 28, 28], width=16, mults="1,2,4")
    seen = []
    net.attn.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[1:])))
    net(torch.randn(2, 1, 28, 28), 1.0, 0.0)
    assert seen == [(64, 7, 7)]
    assert isinstance(UNet([1, 28, 28], width=16, attention="none").attn, torch.nn.Identity)


def test_unet_refuses_channels_that_group_norm_cannot_split():
    with pytest.raises(ValueError, match="multiples of 8"):
        UNet([1, 28, 28], width=12)


def test_bf16_jvp_target_is_close_to_the_float32_one():
    torch.manual_seed(0)
    net = UNet([1, 28, 28], width=16, mults="1,2", num_classes=10)
    x, v = torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28)
    s, t, y = torch.tensor([0.9, 0.7, 0.5, 0.3]), torch.tensor([0.1, 0.2, 0.5, 0.0]), torch.arange(4)
    _, exact = eulerian_target(net, x, s, t, v, y)
    du = torch.func.jvp(lambda a, b: net(a, b, t, y), (x, s), (v, torch.ones_like(s)))[1]
    low = low_precision_jvp(net, x, s, t, v, y, torch.bfloat16).float()
    assert (low - du).norm() / du.norm() < 0.1  # bf16 has 8 mantissa bits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        u, target = eulerian_target(net, x, s, t, v, y)
    assert (target.float() - exact).norm() / exact.norm() < 0.1
    assert u.requires_grad and not target.requires_grad


def test_micro_batches_give_the_full_batch_gradient():
    torch.manual_seed(0)
    net = torch.nn.Linear(5, 1)
    x, y = torch.randn(12, 5), None

    def run(x0, _y):
        return (net(x0).squeeze(1) - x0.sum(1)) ** 2

    grads = []
    for micro in (12, 5):
        net.zero_grad()
        loss = backward(run, x, y, micro)
        grads.append((loss, net.weight.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


def test_plan_fits_the_budget_or_refuses_naming_the_numbers():
    assert memory.plan_micro_batch(128, per_sample=1e6, params_bytes=0, avail=10**12) == 128
    fits = memory.plan_micro_batch(128, per_sample=1e8, params_bytes=0, avail=10**10)
    assert 1 <= fits < 128 and memory.HEADROOM * 1e8 * fits <= memory.BUDGET * 1e10
    with pytest.raises(memory.OutOfMemory, match=r"batch 128: .* GiB .* GiB is available"):
        memory.plan_micro_batch(128, per_sample=1e10, params_bytes=0, avail=10**10)


def test_training_splits_a_batch_that_would_not_fit(tmp_path, monkeypatch, capsys):
    # pretend each row keeps 100 MB for backward and there is room for about 10 of the 32 rows
    monkeypatch.setattr(memory, "saved_bytes_per_sample", lambda *a: 1e8)
    monkeypatch.setattr(memory, "available_bytes", lambda: int(10.5 * memory.HEADROOM * 1e8 / memory.BUDGET))
    out = tmp_path / "m.safetensors"
    cfg = TrainConfig(
        data="digits", arch="unet", width=8, mults="1,2", method="esd", steps=2, batch_size=32, out=str(out)
    )
    train(cfg, progress=True)
    err = capsys.readouterr().err
    assert "4 micro-batches of 10" in err and out.exists()


def test_shipped_mnist_classifier_is_at_least_98_percent_right_on_the_held_out_split():
    from flowmap.classifier import classifier_path, load_classifier

    d, clf = load_data("mnist"), load_classifier(classifier_path("mnist"))
    with torch.inference_mode():
        acc = (clf(d.x_test).argmax(1) == d.y_test).double().mean().item()
    assert acc >= 0.98, acc


def test_score_images_scores_mnist_and_names_a_wrong_shape():
    from flowmap.quality import data_for_shape, score_images

    d = load_data("mnist")
    held_out = score_images(d.x_test[:500], d.y_test[:500], data="mnist")
    blurred = score_images(
        torch.nn.functional.avg_pool2d(d.x_test[:500], 3, 1, 1), d.y_test[:500], data="mnist"
    )
    assert held_out["class_acc"] > 0.97 and held_out["memorised"] == 0
    assert blurred["fd"] > 2 * held_out["fd"] and blurred["fd_pixel"] > held_out["fd_pixel"]
    assert data_for_shape([1, 28, 28]) == "mnist"
    with pytest.raises(ValueError, match=r"mnist samples must be a tensor \[N, 1, 28, 28\]"):
        score_images(torch.zeros(4, 1, 8, 8), data="mnist")
