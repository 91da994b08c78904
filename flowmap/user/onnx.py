"""A user's ONNX file as a torch module: ONNX Runtime on CPU. Its inputs are named x, s, t, y (x, t, y for
one-time parameterisations); inputs the graph does not use may be absent (exporters prune them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from flowmap.user.spec import UserModelError

NAMES = {4: ("x", "s", "t", "y"), 3: ("x", "t", "y")}


class OnnxModule(nn.Module):
    """Calls an InferenceSession with the module protocol's inputs, by name."""

    def __init__(self, path: Path, name: str):
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserModelError(
                f"model {name}: onnxruntime is not installed (pip install onnxruntime)"
            ) from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's own error types
            raise UserModelError(f"model {name}: not a loadable ONNX file ({e})") from None
        self.inputs = [i.name for i in self.session.get_inputs()]
        unknown = sorted(set(self.inputs) - set(NAMES[4]))
        if unknown:
            raise UserModelError(
                f"model {name}: ONNX inputs {unknown} are not among x, s, t, y (docs/models.md)"
            )

    def forward(self, *args: Tensor) -> Tensor:
        given = dict(zip(NAMES[len(args)], args, strict=True))
        missing = [k for k in self.inputs if k not in given]
        if missing:
            raise ValueError(
                f"the ONNX file takes {self.inputs}; {missing} is not an input of this parameterisation"
            )
        feed = {k: np.ascontiguousarray(given[k].detach().cpu().numpy()) for k in self.inputs}
        (out,) = self.session.run(None, feed)[:1]
        return torch.from_numpy(np.asarray(out)).to(args[0].device)
