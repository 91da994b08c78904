"""Load checks of a user's model: each raises UserModelError naming the model and what failed.

1. output shape and dtype of the module on a probe batch (as x's);
2. finite outputs of the adapted net u(x, s, t, y) on the probe batch;
3. rows independent: each row alone gives what it gives within the batch (the step-level scheduler
   batches unrelated requests together; DESIGN.md: a sample never depends on its batch-mates);
4. the spec against what the module does, where a probe can tell: a consistency function returns its
   input at the data end (f(x, data) = x), a flow map is the identity at equal times (X_{s,s} = x).
   A velocity or average-velocity model's time convention cannot be told by a probe (docs/models.md).
Engine parity (an exported or compiled engine against eager) is engines.base.check_parity's, at load.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowmap.user.adapt import UserNet
from flowmap.user.spec import UserModelError

PROBE_ROWS = 6
ROW_TOLERANCE = 1e-4  # max |row alone - row in batch| / max |batch output|, float32
SPEC_TOLERANCE = 0.05  # mean |f(x, data) - x| / mean |x| (consistency), mean |X_{s,s} - x| / mean |x|


def probe(net: UserNet, rows: int = PROBE_ROWS, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x, s, t, y): x ~ N(0, I), s from 1 down, t < s down to 0, labels cycled through 0..C (C: null)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, *net.shape, generator=g)
    s = torch.linspace(1.0, 0.3, rows)
    t = s * torch.linspace(0.0, 0.8, rows)
    y = torch.arange(rows) % (net.num_classes + 1) if net.num_classes else torch.zeros(rows, dtype=torch.long)
    return x, s, t, y


def run_checks(net: UserNet, name: str) -> None:
    x, s, t, y = probe(net)
    with torch.inference_mode():
        check_output(net, name, x, s, t, y)
        u = check_finite(net, name, x, s, t, y)
        check_rows(net, name, u, x, s, t, y)
        check_spec(net, name, x, s, y)


def _call(name: str, what: str, fn, *args) -> Tensor:
    try:
        return fn(*args)
    except Exception as e:  # the user's code: any failure is the model's, reported in one line
        first = (str(e).strip().splitlines() or [""])[0]
        raise UserModelError(f"model {name}: {what} raised {type(e).__name__}: {first}") from None


def check_output(net: UserNet, name: str, x: Tensor, s: Tensor, t: Tensor, y: Tensor) -> None:
    two_times = net.spec.parameterisation in ("average_velocity", "flow_map")
    out = _call(
        name, f"the module on a probe batch x{list(x.shape)}", net.raw, x, s, t if two_times else None, y
    )
    if not isinstance(out, Tensor):
        raise UserModelError(f"model {name}: the module returned {type(out).__name__}, not a tensor")
    if list(out.shape) != list(x.shape):
        raise UserModelError(f"model {name}: output shape {list(out.shape)} for input {list(x.shape)}")
    if out.dtype != x.dtype:
        raise UserModelError(f"model {name}: output dtype {out.dtype} for input {x.dtype}")


def check_finite(net: UserNet, name: str, x: Tensor, s: Tensor, t: Tensor, y: Tensor) -> Tensor:
    u = _call(name, "the adapted net on a probe batch", net, x, s, t, y)
    bad = int((~torch.isfinite(u)).sum())
    if bad:
        raise UserModelError(f"model {name}: {bad} of {u.numel()} outputs are NaN or inf on a probe batch")
    return u


def check_rows(net: UserNet, name: str, u: Tensor, x: Tensor, s: Tensor, t: Tensor, y: Tensor) -> None:
    scale = float(u.abs().max().clamp_min(1e-6))
    for i in range(len(x)):
        alone = _call(name, "a probe row alone", net, x[i : i + 1], s[i : i + 1], t[i : i + 1], y[i : i + 1])
        err = float((alone[0] - u[i]).abs().max()) / scale
        if not err <= ROW_TOLERANCE:
            raise UserModelError(
                f"model {name}: rows are not independent: row {i} alone differs from it within a batch of "
                f"{len(x)} (relative {err:.3g} > {ROW_TOLERANCE:g}); the server batches unrelated requests"
            )


def check_spec(net: UserNet, name: str, x: Tensor, s: Tensor, y: Tensor) -> None:
    kind, time = net.spec.parameterisation, net.spec.time
    if kind == "consistency":
        data = torch.zeros_like(s)
        err = _rel(_call(name, "f(x, data end)", net.raw, x, data, None, y) * net.time.scale(data, x), x)
        what = f"f(x, t) at the data end of time {time!r} is not x"
    elif kind == "flow_map":
        err = _rel(_call(name, "X_{s,s}", net.raw, x, s, s, y) / net.time.scale(s, x), x)
        what = "X_{s,s}(x) is not x"
    else:
        return
    if not err <= SPEC_TOLERANCE:
        raise UserModelError(
            f"model {name}: the spec does not match the module: {what} (relative {err:.3g} > "
            f"{SPEC_TOLERANCE:g}); check its parameterisation and time convention"
        )


def _rel(out: Tensor, x: Tensor) -> float:
    return float((out - x).abs().mean() / x.abs().mean().clamp_min(1e-12))
