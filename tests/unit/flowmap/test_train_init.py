"""`--init`: a second training stage starts from a checkpoint's weights, and refuses another architecture."""

from __future__ import annotations

import pytest
import torch

from flowmap.checkpoint import load_model
from flowmap.train import TrainConfig, train

torch.set_num_threads(1)


def _cfg(tmp_path, name, **kw):
    base = dict(data="gmm8", method="fm", steps=3, width=32, depth=1, batch_size=16, warmup=1, ema=0.0)
    return TrainConfig(**(base | {"out": str(tmp_path / f"{name}.safetensors")} | kw))


def _weights(path):
    return torch.cat([p.flatten() for p in load_model(str(path)).net.parameters()])


def test_init_starts_from_the_checkpoint_weights(tmp_path):
    first = train(_cfg(tmp_path, "a", lr=1e-1, seed=1), progress=False)
    tiny = dict(lr=1e-9, seed=2)  # a near-zero step: the result is the starting point
    resumed = train(_cfg(tmp_path, "b", init=str(first), **tiny), progress=False)
    fresh = train(_cfg(tmp_path, "c", **tiny), progress=False)
    assert torch.allclose(_weights(resumed), _weights(first), atol=1e-6)
    assert not torch.allclose(_weights(fresh), _weights(first), atol=1e-3)


def test_init_refuses_another_architecture(tmp_path):
    first = train(_cfg(tmp_path, "a"), progress=False)
    with pytest.raises(ValueError, match="--init .* architecture"):
        train(_cfg(tmp_path, "b", width=64, init=str(first)), progress=False)
