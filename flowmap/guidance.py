"""Classifier-free guidance: the one place its mix is written (samplers, teachers, losses, the server)."""

from __future__ import annotations

from torch import Tensor


def cfg_mix(u_cond: Tensor, u_null: Tensor, w: float | Tensor) -> Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): u_null + w * (u_cond - u_null); w a float or [B]."""
    # w = 1 is the conditional field; their Eq. 6 writes the same mix with w_theirs = w - 1
    if isinstance(w, Tensor) and w.dim() == 1 and u_cond.dim() > 1:
        w = w.reshape(-1, *([1] * (u_cond.dim() - 1)))  # [B] -> [B, 1, ...]
    return u_null + w * (u_cond - u_null)
