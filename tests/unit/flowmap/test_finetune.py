import json

import numpy as np
import pytest
import torch
from PIL import Image

from flowmap.checkpoint import load_model
from flowmap.cli import main
from flowmap.data import gmm8_means


def finetune(out, *extra):
    args = ["finetune", "--model", "gmm8", "--reward", "mode:0", "--out", str(out), "--batch-size", "64"]
    return main(
        args + ["--eval-every", "10", "--ckpt-every", "10", "--eval-n", "256", "--no-progress", *extra]
    )


def test_finetune_raises_the_reward_and_resumes(tmp_path):
    out = tmp_path / "ft.safetensors"
    assert finetune(out, "--steps", "20", "--lr", "1e-3", "--weight", "0.1") == 0
    rows = [json.loads(x) for x in out.with_suffix(".log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 10, 20]
    assert rows[-1]["reward"] > rows[0]["reward"] + 5  # log-density of mode 0, averaged over samples
    assert rows[-1]["energy"] > rows[0]["energy"]  # moving toward one mode moves away from the data
    model = load_model(str(out))
    assert model.config["finetune"]["steps"] == 20 and model.config["data"]["name"] == "gmm8"
    assert Image.open(out.with_suffix(".curves.png")).size == (900, 540)
    assert finetune(out, "--steps", "30", "--lr", "1e-3", "--weight", "0.1", "--resume") == 0
    rows = [json.loads(x) for x in out.with_suffix(".log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 10, 20, 30]
    assert load_model(str(out)).config["finetune"]["steps"] == 30


def test_regulariser_weight_holds_the_model_near_the_base(tmp_path):
    rewards = {}
    for w in ("0", "1000"):
        out = tmp_path / f"w{w}.safetensors"
        assert finetune(out, "--steps", "20", "--lr", "1e-3", "--weight", w) == 0
        rows = [json.loads(x) for x in out.with_suffix(".log.jsonl").read_text().splitlines()]
        rewards[w] = rows[-1]["reward"] - rows[0]["reward"]
    assert rewards["0"] > 5 * max(rewards["1000"], 0.1)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["finetune", "--model", "gmm8", "--reward", "class:3"], "needs digits images"),
        (["finetune", "--model", "gmm8", "--reward", "bogus"], "unknown reward 'bogus'"),
        (["finetune", "--model", "gmm8", "--reward", "mode:0", "--weight", "-1"], "weight must be >= 0"),
        (["finetune", "--model", "gmm8", "--reward", "mode:0", "--sample-steps", "9"], "sample_steps"),
        (["sample", "--model", "gmm8", "--steer", "mode:12", "--out", "x.npy"], "out of range 0..7"),
        (["sample", "--model", "gmm8", "--steer", "ink", "--out", "x.npy"], "needs images"),
        (
            ["sample", "--model", "gmm8", "--steer", "mode:1", "--steer-scale", "-2", "--out", "x.npy"],
            "scale",
        ),
        (
            ["sample", "--model", "gmm8", "--steer", "mode:1", "--steer-scale", "inf", "--out", "x.npy"],
            "scale",
        ),
        (
            ["sample", "--model", "gmm8", "--steer", "mode:1", "--particles", "0", "--out", "x.npy"],
            "particles",
        ),
        (
            ["sample", "--model", "gmm8", "--steer", "mode:1", "--lookahead", "tweedie", "--out", "x.npy"],
            "look-ahead",
        ),
    ],
)
def test_cli_errors_name_the_problem(argv, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv + (["--out", "f.safetensors"] if argv[0] == "finetune" else [])) == 2
    assert match in capsys.readouterr().err


def test_sample_steer_writes_steered_samples(tmp_path, capsys):
    out = tmp_path / "s.npy"
    argv = [
        "sample",
        "--model",
        "gmm8",
        "--steer",
        "mode:2",
        "--n",
        "200",
        "--particles",
        "32",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    x = np.load(out)
    assert x.shape == (200, 2)
    mode = torch.cdist(torch.from_numpy(x), gmm8_means(torch.float32)).argmin(1)
    assert float((mode == 2).double().mean()) >= 0.95
    assert "32 network calls per sample" in capsys.readouterr().out


def test_a_rerun_continues_the_same_config_and_refuses_another(tmp_path, capsys):
    out = tmp_path / "ft.safetensors"
    assert finetune(out, "--steps", "10", "--lr", "1e-3", "--weight", "0.1") == 0
    state = out.with_suffix(".state.safetensors")
    before = state.read_bytes()
    assert finetune(out, "--steps", "10", "--lr", "1e-3", "--weight", "0.1") == 0  # nothing left to do
    assert "resuming" in capsys.readouterr().err
    rows = [json.loads(x) for x in out.with_suffix(".log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 10]  # the log was kept, not restarted
    assert finetune(out, "--steps", "10", "--lr", "2e-3", "--weight", "0.1") == 2
    assert "lr 0.001 -> 0.002" in capsys.readouterr().err
    assert state.read_bytes() == before  # the refused run left the saved state alone
    assert finetune(out, "--steps", "10", "--lr", "2e-3", "--weight", "0.1", "--overwrite") == 0
    rows = [json.loads(x) for x in out.with_suffix(".log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 10]
