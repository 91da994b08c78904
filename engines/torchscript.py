"""TorchScript engine: trace the network once, freeze it, optimise it for inference.

Artifacts are TorchScript archives: they contain code that runs when loaded, so load only archives
from a trusted `flowmap export` whose checksum matched (engines.artifacts checks before loading).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from engines.base import Bucketed, example_inputs
from flowmap.checkpoint import Model


def trace(model: Model, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """Trace u(x, s, t, y) at a small batch (the batch axis stays symbolic), then freeze it."""
    net = model.net.to(device).eval()
    inputs = example_inputs(model, 2, device)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings (torch.as_tensor), torch.jit deprecation
        traced = torch.jit.trace(net, inputs, check_trace=False)
        return torch.jit.freeze(traced.eval())


class TorchScriptEngine(Bucketed):
    name = "torchscript"
    float32_only = True

    def setup(self, module: torch.jit.ScriptModule | None = None, optimize: bool = True) -> None:
        module = module if module is not None else trace(self.model, self.device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still works
            self.module = torch.jit.optimize_for_inference(module) if optimize else module

    def forward(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor) -> Tensor:
        with torch.inference_mode():
            return self.module(x, s, t, y)
