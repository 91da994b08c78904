"""Plain PyTorch references for the Triton kernels: same float ops in the same order, torch only.

Everything is computed in float32. The re-noise step assumes the linear interpolant of DESIGN.md
(alpha_t = 1 - t, sigma_t = t). Noise comes from Philox4x32-10 (Salmon et al. 2011, "Parallel
random numbers: as easy as 1, 2, 3") keyed by the sample's seed with counter (element, step, 0, 0),
then Triton's uint -> uniform map and Box-Muller, so the CPU path draws the same numbers as the
Triton kernel (bits exactly; normals to within float rounding of log/cos/sqrt).
"""

from __future__ import annotations

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
    """Classifier-free guidance u_unc + w * (u_cond - u_unc); u_*: [B, N], w: [B]."""
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
def _umul32(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """(hi, lo) 32-bit halves of a * b for a constant a < 2^32 and b: int64 tensor in [0, 2^32)."""
    b_hi, b_lo = b >> 16, b & 0xFFFF
    p_hi, p_lo = a * b_hi, a * b_lo  # both < 2^48: a * b = p_hi * 2^16 + p_lo, no int64 overflow
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & MASK32
    return hi, lo


def philox4x32(c: list[Tensor], k0: Tensor, k1: Tensor, rounds: int = PHILOX_ROUNDS) -> list[Tensor]:
    """Philox4x32 on int64 tensors holding uint32 values (counter c0..c3, key k0, k1; Random123 order)."""
    c0, c1, c2, c3 = (ci & MASK32 for ci in c)
    k0, k1 = k0 & MASK32, k1 & MASK32
    for _ in range(rounds):
        hi_b, lo_b = _umul32(PHILOX_M[1], c2)
        hi_a, lo_a = _umul32(PHILOX_M[0], c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + PHILOX_W[0]) & MASK32, (k1 + PHILOX_W[1]) & MASK32
    return [c0, c1, c2, c3]


def philox_bits(seeds: Tensor, step: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """First two Philox words for counter (j, step, 0, 0), key = 64-bit seed; [B, n] int64 in [0, 2^32)."""
    seeds = seeds.to(torch.int64)[:, None]
    j = torch.arange(n, dtype=torch.int64, device=seeds.device)[None, :].expand(seeds.shape[0], n)
    st = step.to(torch.int64)[:, None].expand_as(j)
    zero = torch.zeros_like(j)
    r = philox4x32([j, st, zero, zero], seeds.expand_as(j), (seeds >> 32).expand_as(j))
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
