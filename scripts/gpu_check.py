#!/usr/bin/env python
"""GPU check for a lent CUDA machine: one command, no downloads, a few minutes.

    python scripts/gpu_check.py --out gpu_check.json

1. Triton kernels against their PyTorch references (kernels.check).
2. Kernel bandwidth: fused step and post-processing against a device-to-device copy.
3. K-step sampling latency (K = 1..4, batch 1 and 32): eager vs the compile engine (CUDA graphs),
   and the 1-step CUDA-graph latency against one bare network forward.
4. The onnxruntime CUDA engine (and tensorrt, when installed) at the same batches.
5. The server on the device (scripts/server_check.py): lone 1-step request p50 against the bare
   batch-1 forward, and the engine-core loop utilisation under load.
Prints a table and writes JSON. On a machine without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # server_check

import torch  # noqa: E402

BATCHES, STEPS = (1, 32), (1, 2, 3, 4)


def cuda_time(fn, iters: int, warmup: int = 10) -> float:
    """Median seconds per call, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def load_model(name: str):
    """The shipped model, or (no downloads) a random-weight net with the digits architecture."""
    from flowmap.checkpoint import CheckpointError, Model, load_model
    from flowmap.nets import build_net

    try:
        return load_model(name)
    except CheckpointError as e:
        print(f"note: {e}; using random weights with the digits architecture")
        arch = {"name": "mlp", "shape": [1, 8, 8], "width": 512, "depth": 4, "num_classes": 10}
        config = {"name": "digits-random", "arch": arch, "data": {"shape": [1, 8, 8], "num_classes": 10}}
        return Model(build_net(arch).eval().requires_grad_(False), config, Path("random"))


def check_kernels() -> list[dict]:
    from kernels.check import check_against_reference

    return check_against_reference("cuda")


def bandwidth() -> list[dict]:
    """kernels.bench.kernel_bandwidth when present (GB/s and ratio to copy per op), else a local timing."""
    try:
        from kernels.bench import kernel_bandwidth
    except ImportError:
        return local_bandwidth()
    res = kernel_bandwidth()
    return [
        {"op": op, "gb_per_s": res["gbps"][op], "vs_copy": res["gbps"][op] / res["gbps"]["copy"]}
        for op in res["gbps"]
    ]


def local_bandwidth(numel: int = 1 << 24, iters: int = 50) -> list[dict]:
    """GB/s of the step (reads x, u; writes out) and post-processing vs torch copy_ (read + write)."""
    import kernels

    b = 4096
    x, u = (torch.randn(b, numel // b, device="cuda") for _ in range(2))
    s, t = torch.rand(b, device="cuda"), torch.zeros(b, device="cuda")
    dst = torch.empty_like(x)
    img = torch.randn(b, 4, 32, numel // b // (4 * 32), device="cuda")
    copy_s = cuda_time(lambda: dst.copy_(x), iters)
    step_s = cuda_time(lambda: kernels.fused_step(x, u, s, t), iters)
    post_s = cuda_time(lambda: kernels.postprocess(img), iters)
    copy_gbs = 2 * 4 * numel / copy_s / 1e9
    rows = [
        {"op": "copy", "gb_per_s": copy_gbs, "vs_copy": 1.0},
        {"op": "fused_step", "gb_per_s": 3 * 4 * numel / step_s / 1e9},
        {"op": "postprocess", "gb_per_s": 5 * img.numel() / post_s / 1e9},
    ]
    for r in rows[1:]:
        r["vs_copy"] = r["gb_per_s"] / copy_gbs
    return rows


def sample_fn(engine, model, batch: int, steps: int):
    """One K-step generation: K engine calls and K fused steps on a uniform grid from t=1 to 0."""
    import kernels
    from engines.base import example_inputs

    x0, _, _, y = example_inputs(model, batch, "cuda", seed=batch)
    grid = torch.linspace(1, 0, steps + 1, device="cuda")
    times = [
        (grid[k].expand(batch).contiguous(), grid[k + 1].expand(batch).contiguous()) for k in range(steps)
    ]

    def run():
        x = x0
        for s, t in times:
            x = kernels.fused_step(x, engine(x, s, t, y), s, t)
        return x

    return run


def engine_latency(model, names: list[str], iters: int) -> tuple[list[dict], dict]:
    from engines.base import example_inputs
    from engines.load import load_engine

    rows, skipped = [], {}
    engines = {}
    for name in names:
        t0 = time.perf_counter()
        try:
            engines[name] = load_engine(name, model, device="cuda", buckets=BATCHES)
            engines[name].warmup()
            print(f"  {name} ready in {time.perf_counter() - t0:.1f} s", flush=True)
        except Exception as e:  # report any engine that cannot load, keep checking the others
            skipped[name] = f"{type(e).__name__}: {e}"[:500]
    net = model.net.cuda().eval()
    for b in BATCHES:
        inputs = example_inputs(model, b, "cuda")
        with torch.inference_mode():
            bare = cuda_time(lambda inputs=inputs: net(*inputs), iters)
        rows.append({"engine": "bare forward", "batch": b, "steps": 1, "ms": bare * 1e3, "vs_bare": 1.0})
        for k in STEPS:
            for name, engine in engines.items():
                ms = cuda_time(sample_fn(engine, model, b, k), iters) * 1e3
                rows.append({"engine": name, "batch": b, "steps": k, "ms": ms, "vs_bare": ms / 1e3 / bare})
    return rows, skipped


def section(results: dict, name: str, fn, *args) -> None:
    t0 = time.perf_counter()
    print(f"[{name}]", flush=True)
    try:
        results[name] = fn(*args)
    except Exception as e:  # one failing section must not hide the others
        results[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
        print(f"  failed: {type(e).__name__}: {e}", flush=True)
    results.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 1)


def server_line(srv: dict) -> str:
    ratio = srv.get("p50_vs_bare_forward")
    ratio = f" ({ratio:.1f}x the bare forward)" if ratio else ""
    return (
        f"server: lone 1-step p50 {srv['p50_ms']:.3f} ms{ratio}, "
        f"core compute {srv['core_compute_p50_ms']:.3f} ms; "
        f"loop utilisation under load {srv['loop_utilisation']:.0%}"
    )


def latency_lines(lat) -> list[str]:
    if not isinstance(lat, dict):
        return []
    lines = [f"{'engine':14} {'batch':>5} {'steps':>5} {'ms':>8} {'vs bare fwd':>11}"]
    for row in lat["rows"]:
        lines.append(
            f"{row['engine']:14} {row['batch']:5d} {row['steps']:5d} {row['ms']:8.3f} {row['vs_bare']:10.2f}x"
        )
    return lines + [f"skipped {name}: {why}" for name, why in lat["skipped"].items()]


def format_results(r: dict) -> str:
    lines = [f"device: {r['device']}  torch {r['torch']}"]
    k = r.get("kernels")
    if isinstance(k, list):
        bad = [row for row in k if not row["ok"]]
        lines.append(
            f"kernels vs reference: {len(k) - len(bad)}/{len(k)} ok" + (f"; FAILED {bad}" if bad else "")
        )
    for row in r.get("bandwidth") or []:
        if isinstance(row, dict) and "op" in row:
            lines.append(f"  {row['op']:12} {row['gb_per_s']:8.1f} GB/s  {row['vs_copy']:5.2f}x copy")
    for name, sub in r.items():
        if isinstance(sub, dict) and "latency" in sub:
            lines.append(f"model {name}:")
            lines.extend(format_results(sub).splitlines()[1:])
    lines.extend(latency_lines(r.get("latency")))
    srv = r.get("server")
    if isinstance(srv, dict) and "p50_ms" in srv:
        lines.append(server_line(srv))
    for name, value in r.items():
        if isinstance(value, dict) and "error" in value:
            lines.append(f"{name} FAILED: {value['error']}")
    return "\n".join(lines)


def per_model(name: str, engines: list[str], iters: int) -> dict:
    """Engine latency and the server check for one model (mnist 28x28, digits 8x8)."""
    model, out = load_model(name), {"device": torch.cuda.get_device_name(), "torch": torch.__version__}

    def latency():
        rows, skipped = engine_latency(model, engines, iters)
        return {"rows": rows, "skipped": skipped}

    section(out, "latency", latency)

    def server():
        from server_check import check

        srv = check("cuda", name)
        bare = [r for r in out.get("latency", {}).get("rows", []) if r["engine"] == "bare forward"]
        if bare:
            srv["p50_vs_bare_forward"] = srv["p50_ms"] / bare[0]["ms"]
        return srv

    section(out, "server", server)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    p.add_argument("--model", default="mnist,digits", help="comma-separated: each gets latency and server")
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--engines", default="eager,compile,onnxruntime,tensorrt")
    args = p.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine; nothing to check (skipped)")
        args.out.write_text(json.dumps({"skipped": "no CUDA device", "torch": torch.__version__}))
        return 0
    results = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    section(results, "kernels", check_kernels)
    section(results, "bandwidth", bandwidth)
    for name in args.model.split(","):
        results[name] = per_model(name, args.engines.split(","), args.iters)
    print(format_results(results))
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
