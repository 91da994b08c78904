"""torch.compile engine: one graph per batch bucket (static shapes, inputs padded to the bucket);
on CUDA mode "reduce-overhead" captures each bucket's graph as a CUDA graph.

Compiled artifacts are cached on disk so a restart does not recompile from scratch: Inductor's FX
graph cache (generated kernels and wrapper code) and the AOTAutograd cache live under
`$FLOWMAP_CACHE_DIR/inductor` (default ~/.cache/flowmap/inductor) unless TORCHINDUCTOR_CACHE_DIR is
set. Dynamo still re-traces the Python bytecode in every new process, and CUDA graphs are
re-captured (they are process-local), so a warm start is faster, not free.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from engines.base import Bucketed, cache_root


def configure_cache(cache_dir: str | Path | None = None) -> Path:
    """Point Inductor's on-disk caches at a persistent folder and switch them on; returns it."""
    path = (
        Path(cache_dir)
        if cache_dir
        else Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR", cache_root() / "inductor"))
    )
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    if hasattr(functorch_config, "enable_autograd_cache"):
        functorch_config.enable_autograd_cache = True
    return path


class CompileEngine(Bucketed):
    name = "compile"
    float32_only = True

    def setup(self, mode: str | None = None, cache_dir: str | Path | None = None) -> None:
        self.cache_dir = configure_cache(cache_dir)
        self.cuda_graphs = self.device.type == "cuda"
        self.mode = mode or ("reduce-overhead" if self.cuda_graphs else None)
        import torch._dynamo.config as dynamo_config

        # one graph per bucket: let dynamo keep them all instead of falling back to eager
        limit = max(dynamo_config.recompile_limit, len(self.buckets) + 2)
        dynamo_config.recompile_limit = limit
        dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, limit)
        net = self.model.net.to(self.device).eval()
        self.fn = torch.compile(net, mode=self.mode, dynamic=False, fullgraph=True)

    def forward(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor) -> Tensor:
        with torch.inference_mode():
            if self.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
                return self.fn(x, s, t, y).clone()  # CUDA-graph outputs are overwritten by the next replay
            return self.fn(x, s, t, y)
