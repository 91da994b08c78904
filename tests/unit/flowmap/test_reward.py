import math

import pytest
import torch

from flowmap.data import gmm8_means, load_digits
from flowmap.reward import ClassLogProb, GMM8Mode, Ink, RewardError, evaluate_reward, make_reward


def test_class_reward_prefers_the_target_class_on_test_images():
    d = load_digits()
    r3 = make_reward("class:3", [1, 8, 8])
    threes, others = d.x_test[d.y_test == 3], d.x_test[d.y_test != 3]
    assert isinstance(r3, ClassLogProb)
    assert float(r3(threes).exp().mean()) > 0.9
    assert float(r3(others).exp().mean()) < 0.05
    assert float(r3(threes).max()) <= 0.0  # a log-probability


def test_ink_is_mean_brightness():
    blank, full = -torch.ones(2, 1, 8, 8), torch.ones(2, 1, 8, 8)
    half = torch.cat([-torch.ones(1, 1, 4, 8), torch.ones(1, 1, 4, 8)], dim=2)
    assert torch.allclose(Ink()(torch.cat([blank, full, half])), torch.tensor([0.0, 0.0, 1.0, 1.0, 0.5]))


def test_gmm8_mode_is_the_gaussian_log_density():
    x = torch.randn(16, 2)
    mode = 5
    ref = torch.distributions.MultivariateNormal(gmm8_means(torch.float32)[mode], 0.04 * torch.eye(2))
    assert torch.allclose(GMM8Mode(mode)(x), ref.log_prob(x), atol=1e-5)
    assert math.isclose(
        float(GMM8Mode(0)(gmm8_means(torch.float32)[:1])), -math.log(2 * math.pi * 0.04), rel_tol=1e-6
    )


@pytest.mark.parametrize(
    "spec, shape, match",
    [
        ("nope", [2], "unknown reward 'nope'"),
        ("class:10", [1, 8, 8], "out of range 0..9"),
        ("class:x", [1, 8, 8], "not an integer"),
        ("class:3", [2], "needs digits images"),
        ("mode:8", [2], "out of range 0..7"),
        ("mode:1", [1, 8, 8], "needs gmm8 points"),
        ("ink", [2], "needs images"),
        ("no_such_module_xyz:f", [2], "cannot import module"),
        ("math:no_such_fn", [2], "has no attribute"),
        ("math:pi", [2], "not callable"),
    ],
)
def test_bad_specs_name_the_problem(spec, shape, match):
    with pytest.raises(RewardError, match=match):
        make_reward(spec, shape)


def test_user_reward_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "myrewards.py").write_text("def right(x):\n    return x[:, 0]\n\ndef bad(x):\n    return x\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path])
    r = make_reward("myrewards:right", [2])
    x = torch.randn(4, 2)
    assert torch.equal(evaluate_reward(r, x), x[:, 0])
    with pytest.raises(RewardError, match=r"shape \(4,\)"):
        evaluate_reward(make_reward("myrewards:bad", [2]), x)


def test_class_reward_on_mnist_uses_the_mnist_classifier():
    from flowmap.data import load_data
    from flowmap.reward import make_reward

    d = load_data("mnist")
    sevens, others = d.x_test[d.y_test == 7][:20], d.x_test[d.y_test != 7][:20]
    reward = make_reward("class:7", [1, 28, 28])
    assert reward(sevens).mean() > -0.5 > reward(others).mean()
