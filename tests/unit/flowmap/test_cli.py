import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from flowmap.checkpoint import load_checkpoint
from flowmap.cli import main


@pytest.fixture(scope="module")
def gmm_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("gmm") / "g.safetensors"
    rc = main(
        [
            "train",
            "--data",
            "gmm8",
            "--method",
            "esd",
            "--out",
            str(out),
            "--steps",
            "30",
            "--width",
            "32",
            "--depth",
            "1",
            "--ckpt-every",
            "10",
            "--no-progress",
        ]
    )
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("dig") / "d.safetensors"
    rc = main(
        [
            "train",
            "--data",
            "digits",
            "--method",
            "fm",
            "--out",
            str(out),
            "--steps",
            "5",
            "--width",
            "32",
            "--depth",
            "1",
            "--no-progress",
        ]
    )
    assert rc == 0
    return out


def test_train_writes_checkpoint_and_resolved_config(gmm_ckpt):
    m = load_checkpoint(gmm_ckpt)
    assert m.config["method"] == "esd" and m.config["train"]["steps"] == 30
    resolved = json.loads(gmm_ckpt.with_suffix(".json").read_text())
    assert resolved["width"] == 32 and resolved["data"] == "gmm8" and resolved["batch_size"] == 256


def test_sample_npy_and_noise_mapping(gmm_ckpt, tmp_path):
    assert (
        main(
            [
                "sample",
                "--model",
                str(gmm_ckpt),
                "--steps",
                "2",
                "--n",
                "5",
                "--seed",
                "3",
                "--out",
                str(tmp_path / "a.npy"),
            ]
        )
        == 0
    )
    a = np.load(tmp_path / "a.npy")
    assert a.shape == (5, 2) and a.dtype == np.float32
    noise = torch.randn(3, 2, generator=torch.Generator().manual_seed(3))
    np.save(tmp_path / "noise.npy", noise.numpy())
    assert (
        main(
            [
                "sample",
                "--model",
                str(gmm_ckpt),
                "--steps",
                "2",
                "--noise",
                str(tmp_path / "noise.npy"),
                "--out",
                str(tmp_path / "b.npy"),
            ]
        )
        == 0
    )
    # --seed S draws exactly make_noise(N, shape, S): the first rows agree with --noise of the same draws
    assert np.allclose(np.load(tmp_path / "b.npy"), a[:3], atol=1e-6)


def test_sample_png_digits(digits_ckpt, tmp_path):
    out = tmp_path / "grid.png"
    assert (
        main(["sample", "--model", str(digits_ckpt), "--n", "20", "--png-scale", "1", "--out", str(out)]) == 0
    )
    img = np.asarray(Image.open(out))
    assert img.shape == (2 * 9 + 1, 10 * 9 + 1) and img.dtype == np.uint8
    assert (
        main(
            [
                "sample",
                "--model",
                str(digits_ckpt),
                "--class",
                "3",
                "--guidance",
                "2",
                "--n",
                "4",
                "--out",
                str(tmp_path / "c.npy"),
            ]
        )
        == 0
    )
    assert np.load(tmp_path / "c.npy").shape == (4, 1, 8, 8)


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    common = [
        "--data",
        "gmm8",
        "--method",
        "esd",
        "--width",
        "16",
        "--depth",
        "1",
        "--lr-schedule",
        "constant",
        "--warmup",
        "1",
        "--ckpt-every",
        "5",
        "--no-progress",
    ]
    assert main(["train", *common, "--steps", "10", "--out", str(tmp_path / "a.safetensors")]) == 0
    assert main(["train", *common, "--steps", "5", "--out", str(tmp_path / "b.safetensors")]) == 0
    assert (
        main(["train", *common, "--steps", "10", "--resume", "--out", str(tmp_path / "b.safetensors")]) == 0
    )
    a, b = load_checkpoint(tmp_path / "a.safetensors"), load_checkpoint(tmp_path / "b.safetensors")
    for (k, va), vb in zip(a.net.state_dict().items(), b.net.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


BAD = [
    (["sample", "--model", "nope", "--out", "x.npy"], "unknown model 'nope'"),
    (["sample", "--model", "CKPT", "--steps", "0", "--out", "x.npy"], "--steps must be >= 1"),
    (["sample", "--model", "CKPT", "--class", "1", "--out", "x.npy"], "unconditional"),
    (["sample", "--model", "CKPT", "--noise", "NOISE", "--out", "x.npy"], "does not match (N, 2)"),
    (["sample", "--model", "CKPT", "--out", "x.txt"], "must end in .npy or .png"),
    (["sample", "--model", "CORRUPT", "--out", "x.npy"], "not a valid .safetensors"),
    (["train", "--data", "/no/such/dir", "--method", "fm", "--out", "o.safetensors"], "no such path"),
    (["train", "--data", "gmm8", "--method", "magic", "--out", "o.safetensors"], "unknown method 'magic'"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_one_line_no_traceback(argv, message, gmm_ckpt, tmp_path):
    np.save(tmp_path / "noise.npy", np.zeros((3, 5), np.float32))
    (tmp_path / "corrupt.safetensors").write_bytes(b"garbage")
    subst = {
        "CKPT": str(gmm_ckpt),
        "NOISE": str(tmp_path / "noise.npy"),
        "CORRUPT": str(tmp_path / "corrupt.safetensors"),
    }
    argv = [subst.get(a, a) for a in argv]
    p = subprocess.run(
        [sys.executable, "-m", "flowmap", *argv], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], p.stderr


def test_digits_class_out_of_range(digits_ckpt, capsys):
    assert main(["sample", "--model", str(digits_ckpt), "--class", "10", "--out", "x.npy"]) == 2
    assert "--class 10 out of range" in capsys.readouterr().err


def test_user_error_is_one_line_exit_2_and_bugs_keep_their_traceback(monkeypatch, capsys):
    from flowmap.errors import UserError

    class NotYourFault(UserError):  # neither ValueError nor OSError: caught for being a UserError
        pass

    def fail(*args, **kwargs):
        raise NotYourFault("bad thing in your config")

    monkeypatch.setattr("flowmap.evaluate.evaluate_many", fail)
    assert main(["eval", "--model", "gmm8"]) == 2
    assert capsys.readouterr().err.splitlines() == ["flowmap: error: bad thing in your config"]

    def bug(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("flowmap.evaluate.evaluate_many", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["eval", "--model", "gmm8"])
