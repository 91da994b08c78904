"""Triton kernels: fused flow-map step (+ guidance, + Philox re-noise), noise, uint8 NHWC post-processing.

Imported lazily by `kernels.dispatch` (triton is optional). Under TRITON_INTERPRET=1 (set before
triton is imported) the same kernels run on CPU tensors through the interpreter; that is how they
are tested here. On CUDA they are launched with enable_fp_fusion=False so the arithmetic matches the
PyTorch reference op for op (no contraction into FMA); only the Philox normals' log/cos/sqrt may
differ from torch by rounding.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.runtime.interpreter import InterpretedFunction

STEP_BLOCK = 1024
POST_BLOCK = 1024


def interpreted() -> bool:
    """True when these kernels were built for the Triton interpreter (CPU tensors)."""
    return isinstance(_step_kernel, InterpretedFunction)


@triton.jit
def _normal(seed, step, j):
    """Standard normals for per-element seed, step (int64) and index j: Philox counter (j, step, 0, 0)."""
    return tl.randn(seed, (step << 32) + j)


@triton.jit
def _step_kernel(
    x_ptr, u_ptr, uu_ptr, s_ptr, t_ptr, w_ptr, g_ptr, seed_ptr, k_ptr, out_ptr,
    total, N,
    BLOCK: tl.constexpr, GUIDED: tl.constexpr, STOCHASTIC: tl.constexpr,
):  # fmt: skip
    """x, u, uu, out: [B, N] contiguous (flat index o = b * N + j); s, t, w, g, seed, k: [B]."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    b = offs // N
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    u = tl.load(u_ptr + offs, mask=mask).to(tl.float32)
    s = tl.load(s_ptr + b, mask=mask)
    t = tl.load(t_ptr + b, mask=mask)
    if GUIDED:
        uu = tl.load(uu_ptr + offs, mask=mask).to(tl.float32)
        w = tl.load(w_ptr + b, mask=mask)
        u = uu + w * (u - uu)
    if STOCHASTIC:
        g = tl.load(g_ptr + b, mask=mask)
        seed = tl.load(seed_ptr + b, mask=mask)
        k = tl.load(k_ptr + b, mask=mask)
        z = _normal(seed, k, offs - b * N)
        x0 = x + (0.0 - s) * u
        eps = tl.sqrt_rn(1.0 - g * g) * (x0 + u) + g * z
        out = (1.0 - t) * x0 + t * eps
    else:
        out = x + (t - s) * u
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _noise_kernel(seed_ptr, k_ptr, out_ptr, bits_ptr, total, N, BLOCK: tl.constexpr):
    """Normals [B, N] and the first Philox word (as int64 in [0, 2^32)) for seeds [B], steps [B]."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    b = offs // N
    seed = tl.load(seed_ptr + b, mask=mask)
    k = tl.load(k_ptr + b, mask=mask)
    j = offs - b * N
    tl.store(out_ptr + offs, _normal(seed, k, j), mask=mask)
    word, _, _, _ = tl.randint4x(seed, (k << 32) + j)
    tl.store(bits_ptr + offs, word.to(tl.uint32, bitcast=True).to(tl.int64), mask=mask)


@triton.jit
def _post_kernel(
    x_ptr, out_ptr, total, C, H, W, sb, sc, sh, sw, BLOCK: tl.constexpr,
):  # fmt: skip
    """x: [B, C, H, W] any strides -> out: [B, H, W, C] uint8 contiguous, round half to even."""
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = o < total
    c = o % C
    r = o // C
    w = r % W
    r = r // W
    h = r % H
    b = r // H
    x = tl.load(x_ptr + b * sb + c * sc + h * sh + w * sw, mask=mask, other=0.0).to(tl.float32)
    x = tl.where(x != x, -1.0, x)  # NaN -> 0
    y = (tl.minimum(tl.maximum(x, -1.0), 1.0) + 1.0) * 127.5  # in [0, 255]
    f = tl.floor(y)
    d = y - f  # exact: y and f are close floats
    fi = f.to(tl.int32)
    up = (d > 0.5) | ((d == 0.5) & ((fi & 1) == 1))
    tl.store(out_ptr + o, (fi + up.to(tl.int32)).to(tl.uint8), mask=mask)


def _opts() -> dict:
    return {} if interpreted() else {"enable_fp_fusion": False}


def launch_step(
    x: Tensor,
    u: Tensor,
    s: Tensor,
    t: Tensor,
    uu: Tensor | None = None,
    w: Tensor | None = None,
    g: Tensor | None = None,
    seeds: Tensor | None = None,
    k: Tensor | None = None,
) -> Tensor:
    """Run the step kernel; x, u, uu: [B, N] contiguous; per-sample [B] float32 / int64 vectors."""
    out = torch.empty_like(x)
    total, n = x.numel(), x.shape[1]
    guided, stochastic = uu is not None, g is not None
    grid = (triton.cdiv(total, STEP_BLOCK),)
    _step_kernel[grid](
        x, u, uu if guided else u, s, t, w if guided else s, g if stochastic else s,
        seeds if stochastic else s, k if stochastic else s, out, total, n,
        BLOCK=STEP_BLOCK, GUIDED=guided, STOCHASTIC=stochastic, **_opts(),
    )  # fmt: skip
    return out


def launch_noise(seeds: Tensor, k: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Normals [B, n] float32 and first Philox words [B, n] int64 from the noise kernel."""
    b = seeds.shape[0]
    out = torch.empty((b, n), dtype=torch.float32, device=seeds.device)
    bits = torch.empty((b, n), dtype=torch.int64, device=seeds.device)
    grid = (triton.cdiv(b * n, STEP_BLOCK),)
    _noise_kernel[grid](seeds, k, out, bits, b * n, n, BLOCK=STEP_BLOCK, **_opts())
    return out, bits


def launch_postprocess(x: Tensor) -> Tensor:
    """x: [B, C, H, W] float (any strides) -> uint8 [B, H, W, C] contiguous."""
    bsz, c, h, w = x.shape
    out = torch.empty((bsz, h, w, c), dtype=torch.uint8, device=x.device)
    total = out.numel()
    if total:
        grid = (triton.cdiv(total, POST_BLOCK),)
        _post_kernel[grid](x, out, total, c, h, w, *x.stride(), BLOCK=POST_BLOCK, **_opts())
    return out
