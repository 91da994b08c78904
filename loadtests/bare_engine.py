"""The bare engine's rows per second at each batch size, one engine alone in this process (one torch thread,
no HTTP, no scheduler, no other engine between its calls): `python -m loadtests.bare_engine --model mnist
--engine onnxruntime [--batches 1,2,4,8,16,32,64,128] [--seconds 1]` prints JSON {batch: rows/s}.

The denominator of "the server keeps >= 90% of the bare engine's best throughput" (issue 21): the peer
table runs it in a fresh process right before each workload's servers. A rate over a timed run of
back-to-back calls, as a server would make them, not a median latency.
"""

from __future__ import annotations

import argparse
import json
import time

BATCHES = "1,2,4,8,16,32,64,128"  # the server's buckets at its default max_batch_size


def time_bare(model: str, engine: str, batches: list[int], seconds: float = 1.0) -> dict[int, float]:
    """{batch: network rows per second} of `engine` alone, each batch timed for `seconds` (at least 3
    calls) after 3 untimed ones."""
    import torch

    from engines import load_engine
    from engines.base import example_inputs
    from flowmap.checkpoint import load_model

    torch.set_num_threads(1)
    m = load_model(model)
    eng = load_engine(engine, m, device="cpu", buckets=tuple(sorted(set(batches))))
    out = {}
    with torch.inference_mode():
        for b in batches:
            inputs = example_inputs(m, b, torch.device("cpu"), seed=b)
            for _ in range(3):
                eng(*inputs)
            n, t0 = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < seconds or n < 3:
                eng(*inputs)
                n += 1
            out[b] = n * b / elapsed
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.bare_engine", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mnist", help="shipped name or checkpoint path")
    p.add_argument("--engine", default="onnxruntime")
    p.add_argument("--batches", default=BATCHES, help=f"comma-separated (default {BATCHES})")
    p.add_argument("--seconds", type=float, default=1.0, help="timed seconds per batch size")
    a = p.parse_args(argv)
    try:
        batches = [int(b) for b in a.batches.split(",") if b.strip()]
    except ValueError:
        p.error(f"--batches must be comma-separated integers, got {a.batches!r}")
    if not batches or min(batches) < 1 or a.seconds <= 0:
        p.error("--batches must name sizes >= 1 and --seconds must be > 0")
    from engines.base import EngineError
    from flowmap.errors import UserError

    try:
        rates = time_bare(a.model, a.engine, batches, a.seconds)
    except (EngineError, UserError, FileNotFoundError) as e:  # an engine or model that cannot load here
        p.exit(2, f"{p.prog}: {a.engine} on {a.model}: {e}\n")
    print(json.dumps(rates))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
