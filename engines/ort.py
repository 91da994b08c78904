"""ONNX Runtime engine: the ONNX export (dynamic batch axis) in an InferenceSession.

CPU: CPUExecutionProvider tuned for one thread (intra/inter-op 1, sequential, all graph
optimisations). CUDA: CUDAExecutionProvider with I/O bound to torch tensors (no host copies);
the TensorRT execution provider is used when asked for (`providers=("tensorrt", "cuda")`) and present.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from engines.base import Bucketed, EngineError, cache_root, example_inputs
from engines.onnx_export import OUTPUT, export_onnx

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
NUMPY = {torch.float32: np.float32, torch.int64: np.int64, torch.float16: np.float16}


def import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise EngineError(
            "onnxruntime is not installed (pip install onnxruntime, or onnxruntime-gpu for CUDA)"
        ) from None
    return onnxruntime


def session_options(ort, threads: int = 1):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


def provider_list(ort, device: torch.device, wanted: tuple[str, ...] | None, fp16: bool) -> list:
    """[(provider, options)] for the session; EngineError when a wanted provider is missing."""
    wanted = wanted or (("cuda",) if device.type == "cuda" else ("cpu",))
    have = set(ort.get_available_providers())
    missing = [w for w in wanted if PROVIDERS.get(w) not in have]
    if missing:
        raise EngineError(
            f"onnxruntime lacks execution provider(s) {missing} (available: {sorted(have)}); "
            "for CUDA install onnxruntime-gpu"
        )
    options = {
        "cpu": {},
        "cuda": {"device_id": device.index or 0},
        "tensorrt": {
            "device_id": device.index or 0,
            "trt_fp16_enable": fp16,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache_root() / "ort-trt"),
        },
    }
    if device.type == "cuda" and "cuda" in wanted:
        options["cuda"]["user_compute_stream"] = str(torch.cuda.current_stream(device).cuda_stream)
    out = [(PROVIDERS[w], options[w]) for w in wanted]
    return out if "cpu" in wanted else [*out, ("CPUExecutionProvider", {})]


class OnnxRuntimeEngine(Bucketed):
    name = "onnxruntime"

    def setup(
        self,
        onnx_bytes: bytes | None = None,
        providers: tuple[str, ...] | None = None,
        exporter: str = "dynamo",
        threads: int = 1,
    ) -> None:
        if self.dtype == torch.bfloat16:
            raise EngineError("onnxruntime serves float32 (fp16 via TensorRT), not bf16: use eager-bf16")
        ort = import_ort()
        onnx_bytes = onnx_bytes if onnx_bytes is not None else export_onnx(self.model, exporter)
        plist = provider_list(ort, self.device, providers, fp16=self.dtype == torch.float16)
        try:
            self.session = ort.InferenceSession(
                onnx_bytes,
                session_options(ort, threads),
                providers=[p for p, _ in plist],
                provider_options=[o for _, o in plist],
            )
        except Exception as e:  # onnxruntime raises its own error types
            raise EngineError(f"onnxruntime could not load the model: {e}") from e
        self.providers = self.session.get_providers()
        self.input_names = [i.name for i in self.session.get_inputs()]  # an unused y may be dropped

    def forward(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor, run_options=None) -> Tensor:
        feeds = {
            n: v for n, v in zip(("x", "s", "t", "y"), (x, s, t, y), strict=True) if n in self.input_names
        }
        if self.device.type == "cuda":
            return self._forward_cuda(feeds, x)
        feeds = {n: v.detach().contiguous().numpy() for n, v in feeds.items()}
        return torch.from_numpy(self.session.run([OUTPUT], feeds, run_options)[0])

    def release_memory(self) -> None:
        """Shrink the CPU arena to what one smallest-bucket call holds. ONNX Runtime's arena keeps the peak
        of every call for good, so after a warm-up up to 128 rows an mnist session holds ~180 MB of
        activations that a batch cap of 8-16 rows never uses again (docs/server.md "Memory"); batches that
        need it later grow it again. CPU only: a CUDA arena is left as it is."""
        if self.device.type != "cpu":
            return
        opts = import_ort().RunOptions()
        opts.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        x, s, t, y = example_inputs(self.model, self.buckets[0], self.device)
        self.forward(x, s, t, y, run_options=opts)

    def _forward_cuda(self, feeds: dict[str, Tensor], x: Tensor) -> Tensor:
        """Bind torch CUDA tensors as the session's inputs and output (same stream, no copies)."""
        binding, index = self.session.io_binding(), self.device.index or 0
        feeds = {n: v.contiguous() for n, v in feeds.items()}
        for n, v in feeds.items():
            binding.bind_input(n, "cuda", index, NUMPY[v.dtype], tuple(v.shape), v.data_ptr())
        out = torch.empty_like(x, dtype=torch.float32)
        binding.bind_output(OUTPUT, "cuda", index, np.float32, tuple(out.shape), out.data_ptr())
        self.session.run_with_iobinding(binding)
        return out
