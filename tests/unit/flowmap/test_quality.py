"""Quality metrics that blur cannot fool: pixel-space FD, per-class diversity, train/test NN ratio."""

from __future__ import annotations

import pytest
import torch

from flowmap.data import load_digits
from flowmap.metrics import (
    class_diversity,
    mean_pairwise_distance,
    nearest_distances,
    nn_ratio,
    pca_basis,
    project,
)
from flowmap.quality import reference_floors, score_images

torch.set_num_threads(1)


def _gauss(n: int, seed: int, d: int = 6) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_pca_basis_is_orthonormal_and_ordered():
    x = _gauss(500, 0) * torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.1])
    mean, comps = pca_basis(x, 3)
    assert torch.allclose(comps.T @ comps, torch.eye(3, dtype=torch.float64), atol=1e-10)
    var = project(x, (mean, comps)).var(0)
    assert bool((var[:-1] > var[1:]).all()) and abs(var[0].item() / 25 - 1) < 0.2


def test_mean_pairwise_distance_does_not_depend_on_set_size():
    x = _gauss(2000, 1)
    assert abs(mean_pairwise_distance(x[:40]) / mean_pairwise_distance(x) - 1) < 0.05
    assert mean_pairwise_distance(x[:1]) == 0.0


def test_class_diversity_tells_collapse_from_variety():
    x, y = _gauss(600, 2), torch.arange(600) % 3
    ref, ref_y = _gauss(300, 3), torch.arange(300) % 3
    real = class_diversity(x, y, ref, ref_y)
    assert set(real) == {0, 1, 2} and all(0.9 < v < 1.1 for v in real.values())
    collapsed = class_diversity(0.05 * x, y, ref, ref_y)  # every class squeezed toward one point
    assert all(v < 0.1 for v in collapsed.values())


def test_nn_ratio_is_one_for_fresh_draws_and_low_for_near_copies():
    train, test, y_train, y_test = _gauss(1200, 4), _gauss(400, 5), torch.zeros(1200), torch.zeros(400)
    fresh = _gauss(500, 6)
    assert 0.93 < nn_ratio(fresh, train, test, y_train, y_test) < 1.07
    uncorrected = nearest_distances(fresh, train).mean() / nearest_distances(fresh, test).mean()
    assert uncorrected < 0.9  # the bias the subsampling removes: 3x more training points are nearer
    copies = train[:500]  # in a test-sized subset a copy's source is present 1/3 of the time: ratio ~ 2/3
    assert 0.55 < nn_ratio(copies, train, test, y_train, y_test) < 0.75


def test_nn_ratio_subsets_keep_the_test_class_counts():
    train = torch.cat([torch.zeros(300, 2), torch.full((100, 2), 10.0)])
    y_train = torch.cat([torch.zeros(300), torch.ones(100)]).long()
    test, y_test = (
        torch.cat([torch.zeros(10, 2), torch.full((50, 2), 10.0)]),
        torch.tensor([0] * 10 + [1] * 50),
    )
    samples = torch.full((5, 2), 10.0) + 0.01  # class 1 only: a subset without class 1 would put it far
    assert nn_ratio(samples, train, test, y_train, y_test) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_real_digits_score_like_real_digits(digits):
    held_out = digits.x_test  # scored against itself: FD 0, every sample its own nearest test image
    s = score_images(digits.x_train, digits.y_train)
    floors = reference_floors()
    assert s["fd"] == pytest.approx(floors["fd"]) and s["fd_pixel"] == pytest.approx(floors["fd_pixel"])
    assert s["class_acc"] > 0.97 and s["precision"] > 0.9 and s["recall"] > 0.85
    assert 0.9 < s["diversity"] < 1.1 and s["diversity_min"] > 0.85
    assert s["memorised"] == 1.0 and s["nn_ratio"] < 0.75  # the training images: ~2/3 (see nn_ratio)
    assert score_images(held_out)["fd_pixel"] < 1e-6 and "class_acc" not in score_images(held_out)


def test_class_means_fool_the_classifier_but_not_the_new_metrics(digits):
    """Mode collapse to a blurry class average: recognisable (class_acc high) yet not a digit set."""
    means = torch.stack([digits.x_train[digits.y_train == c].mean(0) for c in range(10)])
    y = torch.arange(10).repeat_interleave(50)
    x = means[y] + 0.02 * torch.randn(len(y), 1, 8, 8, generator=torch.Generator().manual_seed(0))
    s, floors = score_images(x, y), reference_floors()
    assert s["class_acc"] >= 0.85
    assert s["diversity"] < 0.2 and s["recall"] < 0.2
    assert s["fd_pixel"] > 10 * floors["fd_pixel"]


def test_seed_fixes_the_nn_ratio_and_nothing_else(digits):
    x = digits.x_test[:200] + 0.3 * torch.randn(200, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    a, b, c = score_images(x, seed=0), score_images(x, seed=0), score_images(x, seed=1)
    assert a == b and a["fd"] == c["fd"] and a["nn_ratio"] != c["nn_ratio"]


@pytest.mark.parametrize(
    ("samples", "labels", "match"),
    [
        (torch.zeros(4, 8, 8), None, r"\[N, 1, 8, 8\].*\[4, 8, 8\]"),
        (torch.full((4, 1, 8, 8), float("nan")), None, "finite"),
        (torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 2]), "one class in 0..9 per sample"),
        (torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 2, 10]), "one class in 0..9"),
    ],
)
def test_bad_input_is_named(samples, labels, match):
    with pytest.raises(ValueError, match=match):
        score_images(samples, labels)


def test_eval_of_other_image_data_says_it_has_no_reference(tmp_path, capsys):
    import numpy as np

    from flowmap.cli import main
    from flowmap.train import TrainConfig, train

    data = tmp_path / "blobs.npz"
    np.savez(data, x=np.random.default_rng(0).integers(0, 255, (40, 8, 8), dtype=np.uint8))
    cfg = TrainConfig(
        data=str(data), method="fm", steps=2, width=16, depth=1, out=str(tmp_path / "b.safetensors")
    )
    ckpt = train(cfg, progress=False)
    assert main(["eval", "--model", str(ckpt), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "scores gmm8, digits and mnist only" in err and "data 'blobs'" in err
