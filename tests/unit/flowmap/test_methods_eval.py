"""`flowmap eval` extensions: precision/recall, the ODE sweep, consistency sampler, plots and grids."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from flowmap.checkpoint import load_model
from flowmap.cli import main
from flowmap.evaluate import evaluate, parse_steps, resolve_sampler
from flowmap.metrics import knn_radii, precision_recall
from flowmap.train import TrainConfig, train

torch.set_num_threads(1)


def test_knn_radius_is_the_kth_other_point():
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
    assert knn_radii(x, k=1).tolist() == [1.0, 1.0, 2.0, 3.0]
    assert knn_radii(x, k=2).tolist() == [3.0, 2.0, 3.0, 5.0]


def test_precision_recall_on_known_sets():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(400, 4, generator=g)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    far = real + 100.0
    assert precision_recall(real, far) == (0.0, 0.0)
    half = real[real[:, 0] > 0]  # a mode-dropping generator: precise, but recall about one half
    precision, recall = precision_recall(real, half)
    assert precision == 1.0 and 0.3 < recall < 0.7


def test_parse_steps():
    assert parse_steps("1,2,4", "--steps") == [1, 2, 4] and parse_steps("", "--ode-steps") == []
    with pytest.raises(ValueError, match="--steps must be >= 1"):
        parse_steps("0,1", "--steps")
    with pytest.raises(ValueError, match="comma-separated integers"):
        parse_steps("a", "--ode-steps")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    cfg = dict(data="gmm8", steps=30, width=32, depth=1, batch_size=64, ckpt_every=10**6)
    fm = train(TrainConfig(method="fm", out=str(d / "fm.safetensors"), **cfg), progress=False)
    ct = train(TrainConfig(method="ct", out=str(d / "ct.safetensors"), **cfg), progress=False)
    return d, fm, ct


def test_consistency_models_use_the_renoising_sampler_and_ode_rows_follow(tiny):
    _, fm, ct = tiny
    assert resolve_sampler(load_model(str(ct))) == "stochastic"
    assert resolve_sampler(load_model(str(fm))) == "euler"  # the teacher: only its diagonal is trained
    assert resolve_sampler(load_model(str(ct)), "flowmap") == "flowmap"
    res = evaluate(load_model(str(fm)), [1, 2], n=256, ode_steps=[1, 4])
    assert [(r["sampler"], r["steps"]) for r in res["rows"]] == [
        ("euler", 1),
        ("euler", 2),
        ("heun", 1),
        ("heun", 4),
    ]
    assert res["method"] == "fm" and all(r["rel_mse"] > 0 and r["energy"] > 0 for r in res["rows"])


def test_eval_cli_compares_models_with_json_plot_and_grids(tiny, capsys):
    d, fm, ct = tiny
    rc = main(
        [
            "eval",
            "--model",
            f"{fm},{ct}",
            "--steps",
            "1,2",
            "--ode-steps",
            "2",
            "--n",
            "256",
            "--json",
            str(d / "r.json"),
            "--plot",
            str(d / "q.png"),
            "--grids",
            str(d / "grids"),
            "--no-progress",
        ]
    )
    assert rc == 0
    out, err = capsys.readouterr()
    assert "eval fm" not in err  # --no-progress: no bar
    assert "model fm on gmm8" in out and "model ct on gmm8" in out and "stochastic" in out
    results = json.loads((d / "r.json").read_text())
    assert [r["model"] for r in results] == ["fm", "ct"] and len(results[0]["rows"]) == 3
    for png in ("q.png", "q_energy.png", "grids/fm_1step.png", "grids/ct_2step.png"):
        assert Image.open(d / png).size[0] > 100


def test_eval_cli_bad_steps_is_one_clear_error(tiny, capsys):
    _, fm, _ = tiny
    assert main(["eval", "--model", str(fm), "--ode-steps", "x"]) == 2
    assert "--ode-steps must be comma-separated integers" in capsys.readouterr().err


def test_digits_eval_reports_precision_recall_and_plots_the_floor(tmp_path, capsys):
    cfg = dict(data="digits", steps=10, width=32, depth=1, batch_size=64, ckpt_every=10**6)
    ckpt = train(TrainConfig(method="fm", out=str(tmp_path / "d.safetensors"), **cfg), progress=False)
    rc = main(
        [
            "eval",
            "--model",
            str(ckpt),
            "--steps",
            "1",
            "--ode-steps",
            "2",
            "--per-class",
            "6",
            "--json",
            str(tmp_path / "d.json"),
            "--plot",
            str(tmp_path / "d.png"),
            "--grids",
            str(tmp_path),
        ]
    )
    assert rc == 0
    err = capsys.readouterr().err  # the progress bar: 2 runs x 10 classes, the run it is on
    assert "eval d" in err and "20/20" in err and "heun, 2 steps" in err
    res = json.loads((tmp_path / "d.json").read_text())
    assert res["fd_floor_train_vs_test"] > 0 and res["fd_pixel_floor_train_vs_test"] > 0
    assert Image.open(tmp_path / "d_pixel.png").size[0] > 100
    for row in res["rows"]:
        assert {"fd", "fd_pixel", "energy", "precision", "recall", "memorised", "class_acc"} <= set(row)
        assert {"diversity", "diversity_min", "nn_ratio"} <= set(row)
        assert 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1
    width, height = Image.open(tmp_path / "d_1step.png").size  # a row of 8 per class, 10 rows, 4x scale
    assert (width, height) == (4 * (8 * 9 + 1), 4 * (10 * 9 + 1))


def test_few_step_rows_are_compared_with_the_models_own_ode():
    """Ratios to the Heun row with the most steps (same noise), printed under the table; none without a
    few-step row."""
    from flowmap.evaluate import format_table, vs_ode

    row = lambda sampler, k, fd, px: {"sampler": sampler, "steps": k, "fd": fd, "fd_pixel": px}
    rows = [row("flowmap", 1, 13.0, 2.8), row("flowmap", 4, 11.5, 2.5), row("heun", 8, 12.0, 3.0)]
    rows.append(row("heun", 64, 10.0, 2.0))
    v = vs_ode(rows)
    assert v["ode"] == "heun 64" and [r["steps"] for r in v["rows"]] == [1, 4]
    assert v["rows"][0]["fd"] == pytest.approx(1.3) and v["rows"][1]["fd_pixel"] == pytest.approx(1.25)
    text = format_table({"model": "m", "data": "mnist", "rows": rows, "vs_ode": v})
    assert text.endswith(
        "against its own ODE (heun 64, same noise), at 1 / 4 steps: "
        "FD 1.300x / 1.150x; pixel FD 1.400x / 1.250x"
    )
    assert vs_ode([row("heun", 4, 1.0, 1.0), row("heun", 64, 1.0, 1.0)]) is None
