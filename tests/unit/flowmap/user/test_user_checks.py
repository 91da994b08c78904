"""Every load check of a user's model has a broken module here that only it catches (the message says
which check failed), and `flowmap sample` exits 2 on a failed check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowmap.checkpoint import load_model
from flowmap.cli import main
from flowmap.user import UserModelError

torch.set_num_threads(1)


@pytest.mark.parametrize(
    "factory, message",
    [
        ("wrong_shape", r"output shape \[6, 1\] for input \[6, 2\]"),
        ("wrong_dtype", "output dtype torch.float64 for input torch.float32"),
        ("nan_output", "outputs are NaN or inf on a probe batch"),
        ("rows_depend", "rows are not independent"),
        ("lies_about_time", r"f\(x, t\) at the data end of time 'reversed' is not x"),
        ("lies_about_parameterisation", r"X_\{s,s\}\(x\) is not x"),
        ("raises", "the module on a probe batch x.6, 2. raised RuntimeError"),
        ("not_a_pair", r"the factory must return \(module, spec\)"),
    ],
)
def test_broken_models_are_refused_naming_the_model_and_the_check(factory, message):
    with pytest.raises(UserModelError, match=message) as e:
        load_model(f"usermodels:{factory}")
    assert f"usermodels:{factory}" in str(e.value) and "\n" not in str(e.value)


def test_unimportable_factory():
    with pytest.raises(UserModelError, match="cannot import the factory"):
        load_model("usermodels:no_such_factory")


def test_sigma_spec_declared_as_ours_is_not_caught_by_the_probe():
    """Documented limit (docs/models.md): f(x, 0) = x at the data end of both sigma and our time."""
    import usermodels as um

    spec = {"shape": [2], "parameterisation": "consistency", "time": "ours"}
    from flowmap.user.adapt import UserNet
    from flowmap.user.checks import run_checks
    from flowmap.user.spec import UserSpec

    run_checks(UserNet(um.GaussSigmaConsistency(), UserSpec.of(spec, "m")), "m")  # no error


def test_sample_exits_2_on_a_failed_check(tmp_path, capsys):
    assert main(["sample", "--model", "usermodels:rows_depend", "--out", str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usermodels:rows_depend" in err and "rows are not independent" in err


def test_sample_cli_on_a_user_model_is_exact(tmp_path):
    import usermodels as um

    z = np.random.default_rng(0).standard_normal((8, 2)).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    out = tmp_path / "x.npy"
    args = [
        "sample",
        "--model",
        "usermodels:gauss_meanflow",
        "--steps",
        "2",
        "--noise",
        str(tmp_path / "z.npy"),
    ]
    assert main([*args, "--out", str(out)]) == 0
    np.testing.assert_allclose(np.load(out), (um.M + um.SD * torch.from_numpy(z)).numpy(), atol=1e-5)


def test_eval_scores_a_user_model_of_a_known_data_set(tmp_path):
    """`flowmap eval` on a user's exact gmm8 velocity (Heun): the error to the exact flow falls with steps."""
    import json

    out = tmp_path / "e.json"
    assert (
        main(
            [
                "eval",
                "--model",
                "usermodels:gmm8_velocity",
                "--steps",
                "1,4,16",
                "--n",
                "256",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["rel_mse"] > rows[1]["rel_mse"] > rows[2]["rel_mse"] and rows[2]["rel_mse"] < 1e-2


def test_eval_of_a_user_model_without_data_is_refused(capsys):
    assert main(["eval", "--model", "usermodels:gauss_velocity", "--steps", "1"]) == 2
    assert "data 'user'" in capsys.readouterr().err


def test_finetune_refuses_a_user_model(tmp_path, capsys):
    args = [
        "finetune",
        "--model",
        "usermodels:gauss_velocity",
        "--reward",
        "ink",
        "--out",
        str(tmp_path / "f.st"),
    ]
    assert main(args) == 2 and "served, not fine-tuned" in capsys.readouterr().err
