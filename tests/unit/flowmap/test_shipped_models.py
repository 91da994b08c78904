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


def _digits(model, steps: int, seed: int = 321) -> tuple[torch.Tensor, torch.Tensor]:
    y = balanced_labels(10, 100)
    noise = make_noise(1000, model.shape, seed=seed)
    return torch.cat([generate(model, steps, noise[y == c], class_label=c) for c in range(10)]), y


def test_digits_one_step_samples_are_sharp_and_diverse_and_improve_with_steps():
    """Issue 9: blur cannot pass. The esd-only model (1-step recall 0.31, diversity 0.70, pixel FD 1.35)
    fails each of these; the esdt model meets them with margin for sample noise (docs/methods.md)."""
    from flowmap.quality import score_images

    model = load_model("digits")
    one, four = (score_images(*_digits(model, k)) for k in (1, 4))
    assert one["class_acc"] >= 0.98, one
    assert one["recall"] >= 0.55 and one["diversity"] >= 0.75 and one["fd_pixel"] <= 0.5, one
    assert four["fd_pixel"] <= one["fd_pixel"] and four["fd"] <= 1.1 * one["fd"], (one, four)
    assert min(one["nn_ratio"], four["nn_ratio"]) >= 0.83 and four["memorised"] == 0, (one, four)


def test_shipped_models_load_by_name_under_that_name():
    for name in ("digits", "gmm8"):
        assert load_model(name).name == name


def test_mnist_one_step_samples_are_the_requested_class_and_not_copies():
    """The shipped mnist (28x28) at 1 step: README measures 99.4-99.9% class accuracy, classifier FD 11.7-13.3
    and pixel FD 2.78-3.02 over seeds 0-3; the bars leave room for seed noise and are issue 21's where it
    set one (class accuracy >= 97%)."""
    from flowmap.quality import score_images

    model = load_model("mnist")
    assert model.shape == [1, 28, 28] and model.num_classes == 10
    one = score_images(*_digits(model, 1), data="mnist")
    assert one["class_acc"] >= 0.97 and one["fd"] <= 20 and one["fd_pixel"] <= 4.5, one
    assert one["recall"] >= 0.65 and one["diversity"] >= 0.8, one
    assert one["memorised"] == 0 and one["nn_ratio"] >= 0.9, one


def test_mnist_is_the_first_shipped_name():
    from flowmap.checkpoint import SHIPPED

    assert SHIPPED[0] == "mnist" and load_model("mnist").name == "mnist"
