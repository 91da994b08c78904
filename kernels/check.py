"""Kernel correctness against the PyTorch reference on any device (the GPU check script calls this).

On CPU it runs the kernels through the Triton interpreter (needs TRITON_INTERPRET=1 before triton
is imported); on CUDA the compiled kernels. Deterministic ops must match exactly; Philox words
exactly; normals to within float rounding of log/cos/sqrt (NOISE_ATOL).
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels import dispatch
from kernels import reference as ref

NOISE_ATOL = 1e-5
SHAPES = [(1, (1, 8, 8)), (3, (3, 17, 5)), (33, (2,)), (2, (5000,))]


def _row(op: str, shape, got: Tensor, want: Tensor, atol: float = 0.0) -> dict:
    err = (got.double() - want.double()).abs().max().item() if got.numel() else 0.0
    return {"op": op, "shape": list(shape), "max_abs_err": err, "exact": bool(torch.equal(got, want)),
            "ok": err <= atol and got.shape == want.shape}  # fmt: skip


def _step_rows(b: int, shape, device, g: torch.Generator) -> list[dict]:
    x = torch.randn((b, *shape), generator=g).to(device)
    u2 = torch.randn((2 * b, *shape), generator=g).to(device)
    s = torch.rand(b, generator=g).to(device)
    t = s * torch.rand(b, generator=g).to(device)
    w = 4 * torch.rand(b, generator=g).to(device)
    xf, uf = x.reshape(b, -1), u2.reshape(2 * b, -1)
    run = lambda **kw: dispatch.fused_step(
        x, u2 if "guidance" in kw else u2[:b], s, t, backend="triton", **kw
    )
    rows = [_row("step", x.shape, run().reshape(b, -1), ref.step_ref(xf, uf[:b], s, t))]
    want = ref.step_ref(xf, ref.combine_guidance(uf[:b], uf[b:], w), s, t)
    rows.append(_row("step+cfg", x.shape, run(guidance=w).reshape(b, -1), want))
    seeds = torch.randint(0, 2**62, (b,), generator=g).to(device)
    k = torch.randint(0, 4, (b,), generator=g).to(device)
    z, bits = dispatch._triton_module().launch_noise(seeds, k, xf.shape[1])
    rows.append(_row("philox-bits", x.shape, bits, ref.philox_bits(seeds, k, xf.shape[1])[0]))
    rows.append(_row("noise", x.shape, z, ref.noise_ref(seeds, k, xf.shape[1]), NOISE_ATOL))
    gam = torch.rand(b, generator=g).to(device)
    got = run(guidance=w, gamma=gam, seeds=seeds, step=k).reshape(b, -1)
    want = ref.renoise_ref(xf, ref.combine_guidance(uf[:b], uf[b:], w), s, t, gam, z)
    rows.append(_row("step+cfg+renoise", x.shape, got, want))
    return rows


def half_grid(device="cpu") -> Tensor:
    """x: [1, 1, 1, n] with (x + 1) * 127.5 exactly k / 2 in float32 (most k in 0..510); +-inf, NaN."""
    y = torch.arange(0, 511, dtype=torch.float32) / 2
    base = (y.double() / 127.5 - 1).float()
    found = torch.full_like(y, float("nan"))
    for direction in (1.0, -1.0):  # search the float neighbours of the nearest float
        c = base.clone()
        for _ in range(5):
            hit = ((c + 1.0) * 127.5 == y) & torch.isnan(found)
            found[hit] = c[hit]
            c = torch.nextafter(c, torch.tensor(direction * 10.0))
    x = found[~torch.isnan(found)]
    x = torch.cat([x, torch.tensor([-1.5, 1.5, float("inf"), -float("inf"), float("nan")])])
    return x.reshape(1, 1, 1, -1).to(device)


def _post_rows(device, g: torch.Generator) -> list[dict]:
    rows = []
    for shape in [(2, 3, 5, 7), (1, 1, 8, 8), (4, 4, 3, 33)]:
        x = (1.2 * torch.randn(shape, generator=g)).to(device)
        rows.append(
            _row("postprocess", shape, dispatch.postprocess(x, backend="triton"), ref.postprocess_ref(x))
        )
    x = half_grid(device)
    rows.append(
        _row("postprocess-halves", x.shape, dispatch.postprocess(x, backend="triton"), ref.postprocess_ref(x))
    )
    xt = x.reshape(1, -1, 1, 1).transpose(1, 3)  # non-contiguous view
    rows.append(
        _row(
            "postprocess-strided",
            xt.shape,
            dispatch.postprocess(xt, backend="triton"),
            ref.postprocess_ref(xt),
        )
    )
    return rows  # fmt: skip


def check_against_reference(device: str = "cuda", seed: int = 0) -> list[dict]:
    """Rows {op, shape, max_abs_err, exact, ok} for every kernel against its reference on `device`."""
    dev = torch.device(device)
    dispatch.resolve_path(dev, "triton")  # raises KernelError when the kernels cannot run here
    g = torch.Generator().manual_seed(seed)
    rows = [r for b, shape in SHAPES for r in _step_rows(b, shape, dev, g)]
    return rows + _post_rows(dev, g)
