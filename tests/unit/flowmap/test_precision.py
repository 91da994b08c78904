"""flowmap.model.with_precision: the network under autocast, what `flowmap eval --precision bf16` samples
with and the eager engine serves with."""

import pytest
import torch

from flowmap.checkpoint import load_model
from flowmap.model import Autocast, with_precision


def test_bf16_wraps_the_network_and_keeps_float32_weights_and_output():
    model = load_model("digits")
    assert with_precision(model, "fp32") is model
    low = with_precision(model, "bf16")
    assert isinstance(low.net, Autocast) and low.config is model.config
    assert all(p.dtype == torch.float32 for p in low.net.parameters())
    g = torch.Generator().manual_seed(0)
    x, s, t = torch.randn(16, *model.shape, generator=g), torch.zeros(16), torch.ones(16)
    y = torch.arange(16) % 10
    with torch.inference_mode():
        want, got = model.net(x, s, t, y), low.net(x, s, t, y)
    assert got.dtype == torch.float32
    err = ((got - want).abs().max() / want.abs().max()).item()
    assert 1e-4 < err < 3e-2, err  # computed in bf16, close to float32


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of"):
        with_precision(load_model("digits"), "fp8")
