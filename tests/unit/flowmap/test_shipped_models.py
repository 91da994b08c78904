"""The shipped models meet Issue 2's bars, measured here (exact flow, a classifier), not stored numbers."""

import torch

from flowmap.checkpoint import load_model
from flowmap.classifier import load_classifier
from flowmap.data import load_digits
from flowmap.evaluate import balanced_labels
from flowmap.generate import generate
from flowmap.metrics import gmm8_relative_mse, memorisation_rate
from flowmap.samplers import make_noise


def test_gmm8_matches_the_exact_flow():
    model = load_model("gmm8")
    for steps, bar in ((1, 0.01), (4, 0.005)):
        err = gmm8_relative_mse(lambda z: generate(model, steps, z), n=4096, seed=123)  # noqa: B023
        assert err <= bar, f"{steps}-step relative MSE {err:.4f} > {bar}"


def test_classifier_is_accurate_on_the_test_split():
    data, clf = load_digits(), load_classifier()
    assert (clf(data.x_test).argmax(1) == data.y_test).double().mean() >= 0.97


def test_digits_one_step_samples_are_the_requested_class_and_not_copies():
    model, data, clf = load_model("digits"), load_digits(), load_classifier()
    y = balanced_labels(10, 100)
    noise = make_noise(1000, model.shape, seed=321)
    x = torch.cat([generate(model, 1, noise[y == c], class_label=c) for c in range(10)])
    acc = (clf(x).argmax(1) == y).double().mean().item()
    assert acc >= 0.95, f"class accuracy {acc:.3f}"
    assert memorisation_rate(x, data.x_train, data.x_test) < 0.02
    assert x.abs().max() < 3 and x.std() > 0.3  # real images in model space, not a collapsed output


def test_shipped_models_load_by_name_under_that_name():
    for name in ("digits", "gmm8"):
        assert load_model(name).name == name
