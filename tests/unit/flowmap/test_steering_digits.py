"""The shipped unconditional digits model: every class, no copies, and steerable to one digit."""

import torch

from flowmap.checkpoint import load_model
from flowmap.classifier import load_classifier
from flowmap.data import load_digits
from flowmap.generate import generate_seeded
from flowmap.metrics import memorisation_rate
from flowmap.samplers import make_noise
from flowmap.steering import SteerSpec, steer_model


def test_digits_uncond_draws_every_class_and_no_copies():
    model, data, clf = load_model("digits_uncond"), load_digits(), load_classifier()
    assert model.name == "digits_uncond" and model.num_classes == 0
    x = generate_seeded(model, 2, 1000, seed=5)
    share = torch.bincount(clf(x).argmax(1), minlength=10).double() / len(x)
    assert share.min() >= 0.03, f"class shares {share.tolist()}"
    assert memorisation_rate(x, data.x_train, data.x_test) < 0.02


def test_look_ahead_sir_steers_digits_uncond_to_a_digit():
    model, clf = load_model("digits_uncond"), load_classifier()
    spec = SteerSpec("class:3", 4.0, "sir", 16)
    res = steer_model(model, 2, make_noise(200 * 16, model.shape, 11), spec, seed=11)
    plain = generate_seeded(model, 2, 200, seed=11)
    assert res.calls_per_sample == 32
    assert float((clf(plain).argmax(1) == 3).double().mean()) < 0.25
    assert float((clf(res.x).argmax(1) == 3).double().mean()) >= 0.9
