"""Triton kernels for the fused sampling step and post-processing, each with a PyTorch reference.

API: `fused_step(x, u, s, t, guidance=, u_uncond=, gamma=, seeds=, step=)`, `noise(seeds, step, n)`,
`postprocess(x) -> uint8 NHWC`; Triton on CUDA tensors, the reference (`kernels.reference`) on CPU;
`backend="triton"` forces the kernels (CPU tensors need TRITON_INTERPRET=1 before triton is imported).
`import kernels` needs only torch (and numpy); triton is imported on first use of a Triton path.
Verified: kernels == references on CPU through the Triton interpreter (tests/unit/kernels). Not
verified here: the compiled kernels on a GPU and their speed (`kernels.check`, `kernels.bench`).
"""

from kernels.dispatch import (
    BACKENDS,
    PATHS,
    KernelError,
    fused_step,
    noise,
    postprocess,
    resolve_path,
    triton_available,
)

__all__ = [
    "BACKENDS",
    "PATHS",
    "KernelError",
    "fused_step",
    "noise",
    "postprocess",
    "resolve_path",
    "triton_available",
]
