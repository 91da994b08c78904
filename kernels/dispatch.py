"""Public kernel API: Triton on CUDA tensors, the PyTorch reference on CPU; triton imported lazily.

backend: "auto" (Triton when the tensors are on CUDA and triton imports, else torch), "torch", or
"triton" (forces the kernels; on CPU tensors this needs TRITON_INTERPRET=1 set before triton is
imported). `PATHS` counts which path ran per op: "torch", "triton" or "triton-interpret".
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from types import ModuleType

import torch
from torch import Tensor

from kernels import reference as ref

BACKENDS = ("auto", "torch", "triton")
PATHS: Counter = Counter()  # (op, path) -> calls


class KernelError(RuntimeError):
    """The requested kernel backend cannot run here."""


@functools.lru_cache(maxsize=1)
def _triton_module() -> ModuleType | None:
    try:
        from kernels import triton_kernels
    except ImportError:
        return None
    return triton_kernels


def triton_available() -> bool:
    """Whether the Triton kernels import (triton installed)."""
    return _triton_module() is not None


def resolve_path(device: torch.device, backend: str = "auto") -> str:
    """Which path a call on `device` takes: "torch", "triton" or "triton-interpret"."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch" or (backend == "auto" and device.type != "cuda"):
        return "torch"
    mod = _triton_module()
    if mod is None:
        if backend == "triton":
            raise KernelError("backend='triton' needs the triton package (pip install 'flowmap[gpu]')")
        return "torch"
    if mod.interpreted():
        return "triton-interpret"
    if device.type != "cuda":
        raise KernelError(
            f"backend='triton' on {device.type} tensors needs TRITON_INTERPRET=1 set before triton "
            "is imported"
        )
    return "triton"


def _per_sample(v, b: int, like: Tensor, dtype: torch.dtype, name: str) -> Tensor:
    """A python number or [B] tensor as a contiguous [B] vector of `dtype` on like's device."""
    v = torch.as_tensor(v, dtype=dtype, device=like.device)
    if v.dim() == 0:
        v = v.expand(b)
    if v.shape != (b,):
        raise ValueError(f"{name} must be a number or a [{b}] tensor, got shape {tuple(v.shape)}")
    return v.contiguous()


def _flat(a: Tensor, b: int, name: str) -> Tensor:
    if not a.is_floating_point():
        raise ValueError(f"{name} must be a float tensor, got {a.dtype}")
    if a.dim() < 1 or a.shape[0] != b:
        raise ValueError(f"{name} must have {b} rows, got shape {tuple(a.shape)}")
    return a.reshape(b, math.prod(a.shape[1:])).contiguous()  # [B, N]; copies only if not contiguous


def _split_guidance(u: Tensor, u_uncond: Tensor | None, b: int) -> tuple[Tensor, Tensor]:
    if u_uncond is not None:
        return u, u_uncond
    if u.shape[0] != 2 * b:
        raise ValueError(f"guidance without u_uncond needs u with 2B = {2 * b} rows, got {u.shape[0]}")
    return u[:b], u[b:]


def _check_unit(v, name: str) -> None:
    """Range-check numbers and CPU tensors; CUDA tensors are not read back (no host sync)."""
    if isinstance(v, Tensor) and v.device.type == "cuda":
        return
    v = torch.as_tensor(v, dtype=torch.float64)
    if not bool(((v >= 0) & (v <= 1)).all()):
        raise ValueError(f"{name} must be in [0, 1]")


def _step_inputs(x, u, s, t, guidance, u_uncond, gamma, seeds, step) -> dict:
    """Validate and flatten the step's inputs: [B, N] tensors and [B] vectors (float32 / int64)."""
    b = x.shape[0] if x.dim() else -1
    args = {"x": _flat(x, b, "x")}
    if guidance is not None:
        u_cond, u_unc = _split_guidance(u, u_uncond, b)
        args["uu"] = _flat(u_unc, b, "u_uncond")
        args["w"] = _per_sample(guidance, b, x, torch.float32, "guidance")
        u = u_cond
    elif u_uncond is not None:
        raise ValueError("u_uncond is only used with guidance; pass guidance=w")
    args["u"] = _flat(u, b, "u")
    for name in ("u", "uu"):
        if name in args and args[name].shape != args["x"].shape:
            raise ValueError(f"{name} must match x's shape {tuple(x.shape)}")
    args["s"] = _per_sample(s, b, x, torch.float32, "s")
    args["t"] = _per_sample(t, b, x, torch.float32, "t")
    if gamma is not None:
        if seeds is None:
            raise ValueError("the stochastic step (gamma) needs per-sample seeds")
        _check_unit(gamma, "gamma")
        args["g"] = _per_sample(gamma, b, x, torch.float32, "gamma")
        args["seeds"] = _per_sample(seeds, b, x, torch.int64, "seeds")
        args["k"] = _per_sample(step, b, x, torch.int64, "step")
    return args


def _step_torch(x, u, s, t, uu=None, w=None, g=None, seeds=None, k=None) -> Tensor:
    if uu is not None:
        u = ref.combine_guidance(u, uu, w)
    if g is None:
        return ref.step_ref(x, u, s, t)
    z = ref.noise_ref(seeds, k, x.shape[1])
    return ref.renoise_ref(x, u, s, t, g, z)


def fused_step(
    x: Tensor,
    u: Tensor,
    s,
    t,
    *,
    guidance=None,
    u_uncond: Tensor | None = None,
    gamma=None,
    seeds=None,
    step=0,
    backend: str = "auto",
) -> Tensor:
    """One fused sampling step with per-sample s, t ([B] or numbers); returns x's shape and dtype.

    Plain: X_{s,t}(x) = x + (t - s) u (DESIGN.md). guidance=w: u = u_unc + w (u_cond - u_unc), with
    u_unc from `u_uncond` or from the last B of u's 2B rows. gamma (needs seeds [B] and step): jump
    to data with u = u(x, s, 0, y) and re-noise to t with Philox noise from (seed, step, element)
    (linear interpolant; see `reference.renoise_ref`). x, u: [B, *shape].
    """
    path = resolve_path(x.device, backend)
    args = _step_inputs(x, u, s, t, guidance, u_uncond, gamma, seeds, step)
    if args["x"].numel() == 0:
        out = args["x"].clone()
    elif path == "torch":
        out = _step_torch(**args).to(x.dtype)
    else:
        out = _triton_module().launch_step(**args)
    PATHS[("step", path)] += 1
    return out.reshape(x.shape)


def noise(seeds, step, n: int, *, device=None, backend: str = "auto") -> Tensor:
    """Standard normals [B, n] float32 for seeds [B] at step(s): row i depends on (seeds[i], step[i]) only."""
    seeds = torch.as_tensor(seeds, dtype=torch.int64, device=device).reshape(-1)
    k = _per_sample(step, seeds.shape[0], seeds, torch.int64, "step")
    path = resolve_path(seeds.device, backend)
    if path == "torch":
        out = ref.noise_ref(seeds, k, n)
    else:
        out = _triton_module().launch_noise(seeds.contiguous(), k, n)[0]
    PATHS[("noise", path)] += 1
    return out


def postprocess(x: Tensor, *, backend: str = "auto") -> Tensor:
    """uint8 [B, H, W, C] = round_half_even((clip(x, -1, 1) + 1) * 127.5) of x: [B, C, H, W]; NaN -> 0."""
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"postprocess needs a float [B, C, H, W] tensor, got {x.dtype} {tuple(x.shape)}")
    path = resolve_path(x.device, backend)
    out = ref.postprocess_ref(x) if path == "torch" else _triton_module().launch_postprocess(x)
    PATHS[("postprocess", path)] += 1
    return out
