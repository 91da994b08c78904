"""Triton kernels for the fused sampling step and post-processing, each with a PyTorch reference.

`import kernels` needs only torch; triton is imported on first use of a Triton path.
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
