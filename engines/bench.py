"""Benchmarks: every engine x batch size on a model (latency median/p99, samples/s, ratio to eager
measured in the same run, interleaved so drift hits all engines alike), and the fused sampling step
(`kernels.fused_step`: Triton on CUDA, its torch reference on CPU) against unfused torch ops.
"""

from __future__ import annotations

import datetime
import platform
import statistics
import time

import torch

from engines.base import DEFAULT_BUCKETS, EngineError, example_inputs, sync
from engines.load import load_engine
from flowmap.checkpoint import Model


def latencies(fn, inputs: tuple, iters: int, device: torch.device) -> list[float]:
    """Seconds per call of fn(*inputs), one sample per call."""
    out = []
    for _ in range(iters):
        sync(device)
        t0 = time.perf_counter()
        fn(*inputs)
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def summarize(times: list[float], batch: int) -> dict:
    times = sorted(times)
    med = statistics.median(times)
    p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
    return {"median_ms": med * 1e3, "p99_ms": p99 * 1e3, "samples_per_s": batch / med}


def load_all(model: Model, names: list[str], device: str, buckets: tuple[int, ...]) -> tuple[dict, dict]:
    """({name: engine}, {name: reason it was skipped}); eager always first."""
    engines, skipped = {}, {}
    for name in ["eager", *[n for n in names if n != "eager"]]:
        t0 = time.perf_counter()
        try:
            engine = load_engine(name, model, device=device, buckets=buckets)
            engine.warmup()
            engines[name] = engine
        except EngineError as e:
            skipped[name] = str(e)
        else:
            print(f"  {model.name}: {name} ready in {time.perf_counter() - t0:.1f} s", flush=True)
    return engines, skipped


def bench_model(
    model: Model, engines: dict, batches: list[int], iters: int, warmup: int = 5, rounds: int = 5
) -> list[dict]:
    """Rows {model, engine, batch, median_ms, p99_ms, samples_per_s, vs_eager} for every pair."""
    rows = []
    for b in batches:
        device = next(iter(engines.values())).device
        inputs = example_inputs(model, b, device, seed=b)
        for engine in engines.values():
            latencies(engine, inputs, warmup, device)
        times = {name: [] for name in engines}
        for _ in range(rounds):  # interleave engines so load changes on the box hit all of them
            for name, engine in engines.items():
                times[name] += latencies(engine, inputs, max(1, iters // rounds), device)
        stats = {name: summarize(ts, b) for name, ts in times.items()}
        for name, st in stats.items():
            ratio = st["samples_per_s"] / stats["eager"]["samples_per_s"]
            rows.append({"model": model.name, "engine": name, "batch": b, **st, "vs_eager": ratio})
    return rows


def bench_step(shape: list[int], batches: list[int], iters: int, device: str = "cpu") -> list[dict]:
    """Fused step against unfused torch ops: kernels.bench.bench_step when present, else a local timing."""
    try:
        from kernels.bench import bench_step as kernels_bench_step
    except ImportError:
        return local_step(shape, batches, iters, device)
    res = kernels_bench_step(
        batch_sizes=tuple(batches), shape=tuple(shape), repeats=5, number=max(1, iters // 5), device=device
    )
    return [
        {
            "shape": [r["batch"], *shape],
            "mode": r["mode"],
            "path": res["path"],
            "unfused_us": r["unfused_ms"] * 1e3,
            "fused_us": r["fused_ms"] * 1e3,
            "speedup": r["speedup"],
        }
        for r in res["rows"]
    ]


def local_step(shape: list[int], batches: list[int], iters: int, device: str = "cpu") -> list[dict]:
    """kernels.fused_step x + (t - s) u against the same step as separate torch ops."""
    import kernels

    dev = torch.device(device)
    rows = []
    for b in batches:
        g = torch.Generator().manual_seed(b)
        x, u = (torch.randn(b, *shape, generator=g).to(dev) for _ in range(2))
        s = torch.rand(b, generator=g).to(dev)
        t = s * 0.5
        view = (b,) + (1,) * len(shape)
        unfused = lambda x, u, s, t, view=view: x + (t - s).view(view) * u
        fused = lambda x, u, s, t: kernels.fused_step(x, u, s, t)
        for fn in (unfused, fused):
            latencies(fn, (x, u, s, t), 10, dev)
        tu, tf = [], []
        for _ in range(5):
            tu += latencies(unfused, (x, u, s, t), max(1, iters // 5), dev)
            tf += latencies(fused, (x, u, s, t), max(1, iters // 5), dev)
        mu, mf = statistics.median(tu), statistics.median(tf)
        rows.append(
            {
                "shape": [b, *shape],
                "mode": "step",
                "path": kernels.resolve_path(dev),
                "unfused_us": mu * 1e6,
                "fused_us": mf * 1e6,
                "speedup": mu / mf,
            }
        )
    return rows


def machine() -> dict:
    return {
        "date": datetime.date.today().isoformat(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def run(
    models: list[Model],
    names: list[str],
    batches: list[int],
    iters: int = 100,
    device: str = "cpu",
    buckets: tuple[int, ...] | None = None,
    step: bool = True,
) -> dict:
    """The whole benchmark as one JSON-able dict {machine, rows, skipped, step}."""
    buckets = buckets or tuple(sorted(set(DEFAULT_BUCKETS) | set(batches)))
    result = {
        "machine": machine(),
        "buckets": list(buckets),
        "iters": iters,
        "rows": [],
        "skipped": {},
        "step": [],
    }
    for model in models:
        engines, skipped = load_all(model, names, device, buckets)
        result["skipped"].update({f"{model.name}/{k}": v for k, v in skipped.items()})
        result["rows"] += bench_model(model, engines, batches, iters)
    if step and models:
        result["step"] = bench_step(models[0].shape, batches, iters, device)
    return result


def format_table(result: dict) -> str:
    lines = [
        f"{'model':8} {'engine':12} {'batch':>5} {'median ms':>10} {'p99 ms':>9} {'samples/s':>11} "
        f"{'vs eager':>8}"
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['model']:8} {r['engine']:12} {r['batch']:5d} {r['median_ms']:10.3f} "
            f"{r['p99_ms']:9.3f} {r['samples_per_s']:11.0f} {r['vs_eager']:7.2f}x"
        )
    for name, why in result["skipped"].items():
        lines.append(f"skipped {name}: {why}")
    if result["step"]:
        lines.append(
            f"\n{'step shape':16} {'mode':8} {'path':8} {'unfused us':>10} {'fused us':>9} {'speedup':>8}"
        )
        for r in result["step"]:
            lines.append(
                f"{str(r['shape']):16} {r['mode']:8} {r['path']:8} {r['unfused_us']:10.1f} "
                f"{r['fused_us']:9.1f} {r['speedup']:7.2f}x"
            )
    m = result["machine"]
    lines.append(
        f"\n{m['date']} {m['platform']} torch {m['torch']}, {m['threads']} thread(s)"
        + (f", {m['cuda']}" if m["cuda"] else "")
    )
    return "\n".join(lines)
