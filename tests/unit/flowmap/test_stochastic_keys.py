"""The re-noising sampler's per-sample draws: keyed by (seed, sample index), so batch-invariant."""

from __future__ import annotations

import torch

from flowmap.checkpoint import Model
from flowmap.generate import generate, renoise_draws
from flowmap.nets import build_net
from flowmap.samplers import make_noise, sample_keys

torch.set_num_threads(1)
ARCH = {"name": "mlp", "shape": [1, 4, 4], "width": 32, "depth": 1, "num_classes": 3}


def test_keys_are_a_stream_per_seed():
    a, b = sample_keys(7, 5), sample_keys(7, 3)
    assert a.dtype == torch.int64 and torch.equal(a[:3], b)  # sample i's key does not depend on n
    assert len(set(a.tolist())) == 5 and bool((a >= 0).all())
    assert not set(a.tolist()) & set(sample_keys(8, 5).tolist())
    assert sample_keys(2**63 - 1, 2).tolist() == sample_keys(2**63 - 1, 2).tolist()


def test_draws_depend_on_the_row_key_and_step_only():
    keys = sample_keys(3, 4)
    full = renoise_draws(keys, (4, 1, 4, 4))
    part = renoise_draws(keys[2:], (2, 1, 4, 4))
    assert torch.equal(full(1)[2:], part(1)) and not torch.equal(full(0), full(1))
    z = full(0)
    assert abs(float(z.mean())) < 0.3 and 0.7 < float(z.std()) < 1.3


def test_stochastic_rows_do_not_depend_on_batch_mates():
    torch.manual_seed(0)
    net = build_net(ARCH).eval()
    model = Model(net, {"arch": ARCH, "data": {"shape": [1, 4, 4], "num_classes": 3}, "method": "ct"}, None)
    noise, keys = make_noise(6, [1, 4, 4], 11), sample_keys(11, 6)
    whole = generate(model, 3, noise, sampler="stochastic", seed=11)
    rows = generate(model, 3, noise[3:5], class_label=None, sampler="stochastic", keys=keys[3:5])
    labels = torch.arange(6) % 3  # generate cycles classes: rows 3, 4 are classes 0, 1 as in the slice
    assert labels[3:5].tolist() == [0, 1]
    torch.testing.assert_close(rows, whole[3:5], rtol=0, atol=1e-6)
    other_seed = generate(model, 3, noise, sampler="stochastic", seed=12)
    assert not torch.allclose(other_seed, whole)  # the re-noise draws follow the seed
    one = [generate(model, 1, noise, sampler="stochastic", seed=sd) for sd in (11, 12)]
    assert torch.equal(*one)  # 1 step never re-noises: the draws' seed does not matter
