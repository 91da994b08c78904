"""The flow-map step of the serving path, chosen in ONE place: the Triton kernel for device tensors when
importable; the plain torch expression for CPU tensors (where the kernel would only run its reference).

`step(x, u, s, t)` is the flow-map jump X_{s,t}(x) = x + (t - s) * u with per-sample s, t: [B].
`renoise(x, u, s, t, keys, k)` is the consistency sampler's step (kernels.fused_step's re-noise path on
any device: on CPU its reference, which is the library's flowmap.samplers.sample_stochastic arithmetic).
Post-processing to uint8 happens in the API processes, in numpy (server.api_process.encode.to_uint8_nhwc).
"""

from __future__ import annotations

from torch import Tensor

from flowmap.interpolants import expand


def _reference_step(x: Tensor, u: Tensor, s: Tensor, t: Tensor) -> Tensor:
    """Same arithmetic as flowmap.samplers.flow_step (so server == CLI bit-for-bit given the same u)."""
    return x + expand(t - s, x) * u


def _pick():
    """(step, backend): kernels.fused_step when that package has it, else None (torch serves)."""
    try:
        import kernels
    except ImportError:
        return None, "torch"
    fused = getattr(kernels, "fused_step", None)
    return (fused, "kernels") if fused is not None else (None, "torch")


_STEP, BACKEND = _pick()


def step(x: Tensor, u: Tensor, s: Tensor, t: Tensor) -> Tensor:
    """x_next = x + (t - s) * u; x, u: [B, ...], s, t: [B]. The kernel's CPU path is a checked torch
    reference with more overhead than the plain expression, so CPU tensors take the expression."""
    if _STEP is None or x.device.type == "cpu":
        return _reference_step(x, u, s, t)
    return _STEP(x, u, s, t)


def renoise(x: Tensor, u: Tensor, s: Tensor, t: Tensor, keys: Tensor, k: Tensor) -> Tensor:
    """Jump to data x0 = x - s u (u = u(x, s, 0, y)), then re-noise to t with fresh Philox noise from
    (keys[i], k[i], element): (1 - t) x0 + t z (gamma = 1, the consistency sampler)."""
    import kernels

    return kernels.fused_step(x, u, s, t, gamma=1.0, seeds=keys.to(x.device), step=k.to(x.device))
