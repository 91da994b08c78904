"""TensorRT engine: build a plan from the ONNX export with the TensorRT Python API (10.x/11.x).

One optimisation profile per batch bucket (min = opt = max = the bucket), one execution context per
profile, I/O bound to torch CUDA tensors by name (set_tensor_address + execute_async_v3 on torch's
stream). fp16: BuilderFlag.FP16 on TensorRT 10; TensorRT 11 removed weak typing, so fp16 there needs
an fp16 ONNX model (ModelOpt AutoCast) and is refused here. Written against the documented API but
NOT run in this project so far (no TensorRT, no GPU on the development machines).
"""

from __future__ import annotations

import torch
from torch import Tensor

from engines.base import Bucketed, EngineError
from engines.onnx_export import export_onnx


def import_trt():
    try:
        import tensorrt
    except ImportError:
        raise EngineError("TensorRT is not installed (pip install tensorrt)") from None
    return tensorrt


def _logger(trt):
    return trt.Logger(trt.Logger.WARNING)


def _parse(trt, builder, logger, onnx_bytes: bytes):
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10+
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT could not parse the ONNX model: {errors}")
    return network


def _add_profiles(builder, config, network, buckets: tuple[int, ...]) -> None:
    """One profile per bucket: every input's batch axis fixed to the bucket."""
    for b in buckets:
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            inp = network.get_input(i)
            shape = (b, *tuple(inp.shape)[1:])
            profile.set_shape(inp.name, shape, shape, shape)
        config.add_optimization_profile(profile)


def build_plan(
    onnx_bytes: bytes, buckets: tuple[int, ...], fp16: bool = False, workspace: int = 1 << 30
) -> bytes:
    """Serialized TensorRT engine (a plan) for the ONNX model, one profile per bucket."""
    trt = import_trt()
    logger = _logger(trt)
    builder = trt.Builder(logger)
    network = _parse(trt, builder, logger, onnx_bytes)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if fp16:
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise EngineError(
                f"TensorRT {trt.__version__} has no FP16 builder flag (strong typing only); "
                "build fp32 or convert the ONNX model to fp16 first (ModelOpt AutoCast)"
            )
        config.set_flag(trt.BuilderFlag.FP16)
    _add_profiles(builder, config, network, buckets)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError("TensorRT failed to build the engine (see the TensorRT log above)")
    return bytes(plan)


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32}
    if hasattr(trt, "int64"):
        table[trt.int64] = torch.int64
    return table[dtype]


class TensorRTEngine(Bucketed):
    name = "tensorrt"
    default_device = "cuda"

    def setup(self, plan: bytes | None = None, onnx_bytes: bytes | None = None) -> None:
        trt = import_trt()
        if self.device.type != "cuda":
            raise EngineError("the tensorrt engine needs a CUDA device (got --device cpu)")
        if plan is None:
            fp16 = self.dtype == torch.float16
            plan = build_plan(onnx_bytes or export_onnx(self.model), self.buckets, fp16=fp16)
        self.plan = plan
        self.runtime = trt.Runtime(_logger(trt))
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise EngineError(
                "TensorRT could not deserialize the plan (built by another TensorRT version "
                "or for another GPU?)"
            )
        if self.engine.num_optimization_profiles != len(self.buckets):
            raise EngineError(
                f"plan has {self.engine.num_optimization_profiles} profiles, buckets are {self.buckets}"
            )
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in self.names}
        self.contexts = {}
        stream = torch.cuda.current_stream(self.device).cuda_stream
        for i, b in enumerate(self.buckets):
            ctx = self.engine.create_execution_context()
            ctx.set_optimization_profile_async(i, stream)
            self.contexts[b] = ctx

    def forward(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor) -> Tensor:
        ctx = self.contexts[x.shape[0]]
        feeds = dict(zip(("x", "s", "t", "y"), (x, s, t, y), strict=True))
        keep = []  # inputs converted to the plan's dtypes must outlive the launch
        for n in self.inputs:
            v = feeds[n].to(self.dtypes[n]).contiguous()
            keep.append(v)
            ctx.set_input_shape(n, tuple(v.shape))
            ctx.set_tensor_address(n, v.data_ptr())
        out = torch.empty(x.shape, dtype=self.dtypes["u"], device=self.device)
        ctx.set_tensor_address("u", out.data_ptr())
        if not ctx.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise EngineError("TensorRT execution failed")
        return out.float()
