"""The ranges a request must fit, written once. The API process checks them and names the field (422, or
v2's 400); the engine core checks the same again on every Generate frame, since it trusts no one: a bad
request must fail alone, never inside a shared batch. Each check returns the problem, or None.

Only what is given is checked: the API skips what the client left to a default (steps "auto", a random
seed, the model's sampler), the core skips steps 0 (the wire's "auto") and labels None (unconditional).
"""

from __future__ import annotations

import math

SEED_MAX = 2**63 - 1


def _show(v) -> str:
    text = repr(v)
    return text if len(text) <= 64 else text[:61] + "..."


def _int_in(v, lo: int, hi: int) -> bool:
    return type(v) is int and lo <= v <= hi


def steps(v, settings) -> str | None:
    if not _int_in(v, 1, settings.max_steps):
        return f"steps must be in 1..{settings.max_steps} or 'auto', got {_show(v)}"
    return None


def num_samples(n, settings) -> str | None:
    if not _int_in(n, 1, settings.max_samples):
        return f"num_samples must be in 1..{settings.max_samples}, got {_show(n)}"
    return None


def seed(v) -> str | None:
    if not _int_in(v, 0, SEED_MAX):
        return f"seed must be in 0..{SEED_MAX}, got {_show(v)}"
    return None


def guidance(w, settings) -> str | None:
    if not (type(w) in (int, float) and math.isfinite(w) and abs(w) <= settings.max_guidance):
        return f"guidance_scale must be finite with |w| <= {settings.max_guidance}"
    return None


def guidance_for(w: float, num_classes: int, model: str) -> str | None:
    """Guidance (w != 1) needs a class-conditional model."""
    if w != 1.0 and num_classes == 0:
        return f"model {model!r} is unconditional; guidance_scale must be 1"
    return None


def sampler(name, served: list[str], model: str) -> str | None:
    if name not in served:
        return f"sampler {str(name)[:64]!r}: model {model!r} serves {', '.join(served)}"
    return None


def labels(values, n: int, num_classes: int, model: str) -> str | None:
    """One class per sample, each in 0..C-1 (C = num_classes)."""
    if num_classes == 0:
        return f"model {model!r} is unconditional; omit class_label"
    if type(values) is not list or len(values) != n:
        count = len(values) if type(values) is list else _show(values)
        return f"class_label list has {count} entries for num_samples={n}"
    bad = [v for v in values if not _int_in(v, 0, num_classes - 1)]
    if bad:
        return f"class_label {_show(bad[0])} out of range: model {model!r} has classes 0..{num_classes - 1}"
    return None
