"""Benchmarks: the fused step against unfused torch ops (CPU), and Triton step bandwidth (CUDA only).

Verified here (2-vCPU CPU box, no GPU): the kernels' correctness through the Triton interpreter
(tests/unit/kernels) and `bench_step` on CPU, where the "fused" path is the PyTorch reference (fewer
passes, in-place ops; no Triton). NOT verified here: any GPU number; `kernel_bandwidth` has only
been written, to run on a CUDA machine (goal: step kernel >= 80% of device-to-device copy GB/s).
"""

from __future__ import annotations

import statistics
import time
from functools import partial

import torch
from torch import Tensor

from kernels import dispatch
from kernels.dispatch import KernelError


def _median_ms(fn, repeats: int, number: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return 1e3 * statistics.median(times)


def _unfused(mode: str, x: Tensor, u2: Tensor, s: Tensor, t: Tensor, w: Tensor, gen: torch.Generator):
    """The step as `flowmap.samplers` writes it: guided() combine, flow_step, sample_stochastic re-noise."""
    b = x.shape[0]
    e = lambda v: v.reshape(-1, *([1] * (x.dim() - 1)))
    cond, unc = u2.chunk(2) if mode != "step" else (u2[:b], None)
    u = cond if unc is None else unc + e(w) * (cond - unc)
    if mode != "renoise":
        return x + e(t - s) * u
    x0 = x + e(0 - s) * u
    eps_old = (x - e(1 - s) * x0) / e(s)
    fresh = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    return e(1 - t) * x0 + e(t) * (0.6 * eps_old + 0.8 * fresh)


def _fused(mode: str, x: Tensor, u2: Tensor, s: Tensor, t: Tensor, w: Tensor, seeds: Tensor):
    if mode == "step":
        return dispatch.fused_step(x, u2[: x.shape[0]], s, t)
    if mode == "cfg":
        return dispatch.fused_step(x, u2, s, t, guidance=w)
    return dispatch.fused_step(x, u2, s, t, guidance=w, gamma=0.8, seeds=seeds, step=1)


def bench_step(
    batch_sizes=(1, 8, 32, 128),
    shape=(1, 8, 8),
    modes=("step", "cfg", "renoise"),
    repeats: int = 7,
    number: int = 50,
    device: str = "cpu",
) -> dict:
    """Median ms per call of the fused step (dispatch; reference path on CPU) vs unfused torch ops."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    for b in batch_sizes:
        x = torch.randn((b, *shape), generator=gen).to(device)
        u2 = torch.randn((2 * b, *shape), generator=gen).to(device)
        s, w = torch.full((b,), 0.75, device=device), torch.full((b,), 2.0, device=device)
        t, seeds = torch.full((b,), 0.5, device=device), torch.arange(b, device=device)
        for mode in modes:
            fused = _median_ms(partial(_fused, mode, x, u2, s, t, w, seeds), repeats, number)
            unfused = _median_ms(partial(_unfused, mode, x, u2, s, t, w, gen), repeats, number)
            rows.append({"batch": b, "mode": mode, "fused_ms": fused, "unfused_ms": unfused,
                         "speedup": unfused / fused})  # fmt: skip
    path = dispatch.resolve_path(torch.device(device))
    return {
        "device": device,
        "path": path,
        "shape": list(shape),
        "threads": torch.get_num_threads(),
        "rows": rows,
    }


def _cuda_ms(fn, reps: int) -> float:
    """Median CUDA-event time of fn in ms after a warm-up."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def kernel_bandwidth(n_bytes: int = 256 << 20, reps: int = 50, batch: int = 64) -> dict:
    """GB/s of the Triton step (reads x, u; writes out), its CFG form, and post-processing vs a D2D copy_."""
    if not torch.cuda.is_available():
        raise KernelError("kernel_bandwidth needs a CUDA device")
    dispatch.resolve_path(torch.device("cuda"), "triton")
    n = max(n_bytes // 4 // batch, 1)
    x = torch.randn(batch, n, device="cuda")
    u2, dst = torch.randn(2 * batch, n, device="cuda"), torch.empty_like(x)
    s, t = torch.full((batch,), 0.75, device="cuda"), torch.full((batch,), 0.5, device="cuda")
    w, nb = torch.full((batch,), 2.0, device="cuda"), x.numel() * 4
    img = x.reshape(batch, 1, n, 1)
    ms = {
        "copy": _cuda_ms(lambda: dst.copy_(x), reps),
        "step": _cuda_ms(lambda: dispatch.fused_step(x, u2[:batch], s, t, backend="triton"), reps),
        "step_cfg": _cuda_ms(lambda: dispatch.fused_step(x, u2, s, t, guidance=w, backend="triton"), reps),
        "postprocess": _cuda_ms(lambda: dispatch.postprocess(img, backend="triton"), reps),
    }
    moved = {"copy": 2 * nb, "step": 3 * nb, "step_cfg": 4 * nb, "postprocess": nb + nb // 4}
    gbps = {k: moved[k] / (ms[k] * 1e-3) / 1e9 for k in ms}
    return {"device": torch.cuda.get_device_name(), "n_bytes": nb, "ms": ms, "gbps": gbps,
            "ratio_to_copy": {k: gbps[k] / gbps["copy"] for k in ms if k != "copy"}}  # fmt: skip


def format_rows(result: dict) -> str:
    """A plain-text table of bench_step's rows."""
    lines = [f"{'batch':>5} {'mode':>8} {'fused ms':>9} {'unfused ms':>10} {'speedup':>7}"]
    for r in result["rows"]:
        ms = f"{r['fused_ms']:>9.4f} {r['unfused_ms']:>10.4f}"
        lines.append(f"{r['batch']:>5} {r['mode']:>8} {ms} {r['speedup']:>7.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(format_rows(bench_step()))
