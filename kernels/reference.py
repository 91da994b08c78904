"""Plain PyTorch references for the Triton kernels: same float ops in the same order, torch only.

Everything is computed in float32. The re-noise step assumes the linear interpolant of DESIGN.md
(alpha_t = 1 - t, sigma_t = t). Noise comes from Philox4x32-10 (Salmon et al. 2011, "Parallel
random numbers: as easy as 1, 2, 3") keyed by the sample's seed with counter (element, step, 0, 0),
then Triton's uint -> uniform map and Box-Muller, so the CPU path draws the same numbers as the
Triton kernel (bits exactly; normals to within float rounding of log/cos/sqrt).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

MASK32 = 0xFFFFFFFF
PHILOX_M = (0xD2511F53, 0xCD9E8D57)  # round multipliers
PHILOX_W = (0x9E3779B9, 0xBB67AE85)  # Weyl key increments
PHILOX_ROUNDS = 10
UNIFORM_SCALE = 4.6566127342e-10  # largest scale with (2^31 - 1) * scale < 1 in float32
TWO_PI = 6.283185307179586
U1_MIN = 1.0e-7


# ---------------------------------------------------------------- fused step
def combine_guidance(u_cond: Tensor, u_uncond: Tensor, w: Tensor) -> Tensor:
    """Classifier-free guidance u_unc + w * (u_cond - u_unc); u_*: [B, N], w: [B].

    The same operations in the same order as flowmap.guidance.cfg_mix (kernels does not import
    flowmap; tests/unit/kernels checks the two agree bit for bit).
    """
    out = u_cond.float() - u_uncond.float()
    out.mul_(w.float()[:, None])
    return out.add_(u_uncond.float())


def step_ref(x: Tensor, u: Tensor, s: Tensor, t: Tensor) -> Tensor:
    """Flow-map jump X_{s,t}(x) = x + (t - s) * u; x, u: [B, N], s, t: [B]; float32 out."""
    d = t.float() - s.float()  # [B]
    return (u.float() * d[:, None]).add_(x.float())


def renoise_ref(x: Tensor, u: Tensor, s: Tensor, t: Tensor, gamma: Tensor, z: Tensor) -> Tensor:
    """Stochastic step (consistency-style multistep, Song et al. 2023 Alg. 1, generalised by gamma).

    x0 = X_{s,0}(x) = x - s u; linear interpolant gives eps_old = (x - (1-s) x0) / s = x0 + u exactly
    (no division, defined at s = 0). Out: (1 - t) x0 + t (sqrt(1 - g^2) eps_old + g z).
    u must be u(x, s, 0, y); x, u, z: [B, N]; s, t, gamma: [B].
    """
    s, t, g = s.float()[:, None], t.float()[:, None], gamma.float()[:, None]
    u = u.float()
    x0 = x.float() + (0.0 - s) * u
    eps_old = x0 + u
    c = torch.sqrt(
        (1.0 - g * g).double()
    ).float()  # correctly rounded like tl.sqrt_rn (torch's fp32 sqrt is not)
    eps = c * eps_old + g * z.float()
    return (1.0 - t) * x0 + t * eps


# ---------------------------------------------------------------- Philox noise
_U32, _M32 = np.uint64(32), np.uint64(MASK32)
_MUL = tuple(np.uint64(m) for m in PHILOX_M)
_WEYL = tuple(np.uint64(w) for w in PHILOX_W)


def _umul32(a: np.uint64, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hi, lo) 32-bit halves of a * b for a < 2^32 and b: uint64 array of values < 2^32."""
    p = a * b  # < 2^64: exact in uint64
    return p >> _U32, p & _M32


def _u32(t: Tensor) -> np.ndarray:
    return t.cpu().numpy().astype(np.uint64) & _M32


def philox4x32(c: list[Tensor], k0: Tensor, k1: Tensor, rounds: int = PHILOX_ROUNDS) -> list[Tensor]:
    """Philox4x32 (Random123 order) on int64 tensors holding uint32 values: counter c0..c3, key k0, k1.

    Runs in numpy uint64 (exact 32 x 32 -> 64-bit products; torch has no uint64 shifts on CPU).
    """
    c0, c1, c2, c3 = (_u32(ci) for ci in c)
    k0, k1 = _u32(k0), _u32(k1)
    for _ in range(rounds):
        hi_b, lo_b = _umul32(_MUL[1], c2)
        hi_a, lo_a = _umul32(_MUL[0], c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _WEYL[0]) & _M32, (k1 + _WEYL[1]) & _M32
    device = c[0].device
    return [torch.from_numpy(ci.astype(np.int64)).to(device) for ci in (c0, c1, c2, c3)]


def philox_bits(seeds: Tensor, step: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """First two Philox words for counter (j, step, 0, 0), key = 64-bit seed; [B, n] int64 in [0, 2^32)."""
    seeds = seeds.to(torch.int64)[:, None]
    j = torch.arange(n, dtype=torch.int64, device=seeds.device)[None, :].expand(seeds.shape[0], n)
    st = step.to(torch.int64)[:, None].expand_as(j)
    zero = torch.zeros_like(j)
    r = philox4x32([j, st, zero, zero], seeds, seeds >> 32)  # keys [B, 1] broadcast
    return r[0], r[1]


def uint_to_uniform(bits: Tensor) -> Tensor:
    """Triton's map of a uint32 to float32 in [0, 1): fold the int32 view to >= 0, scale."""
    signed = torch.where(bits >= 2**31, bits - 2**32, bits)
    folded = torch.where(signed < 0, -signed - 1, signed)
    return folded.to(torch.float32) * UNIFORM_SCALE


def noise_ref(seeds: Tensor, step: Tensor, n: int) -> Tensor:
    """Standard normals [B, n] for sample seeds [B] and step indices [B]: Philox + Box-Muller."""
    b1, b2 = philox_bits(seeds, step, n)
    u1 = torch.clamp_min(uint_to_uniform(b1), U1_MIN)
    th = TWO_PI * uint_to_uniform(b2)  # float32, as in the kernel
    r = torch.sqrt(-2.0 * torch.log(u1.double()))  # float64 then round: within rounding of any fp32 libm
    return (r * torch.cos(th.double())).float()


# ---------------------------------------------------------------- post-processing
def postprocess_ref(x: Tensor) -> Tensor:
    """uint8 NHWC = round_half_even((clip(x, -1, 1) + 1) * 127.5) of x: [B, C, H, W]; NaN -> 0."""
    x = x.float()
    x = torch.where(torch.isnan(x), -1.0, x)
    q = torch.round((x.clamp(-1.0, 1.0) + 1.0) * 127.5).to(torch.uint8)
    return q.permute(0, 2, 3, 1).contiguous()
