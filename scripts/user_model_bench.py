"""A user's model against a flowmap checkpoint of the same network, paired: the engine call and a
core's step-level batches of mixed step counts alternate between the two, so load on a shared box hits
both alike. `PYTHONPATH=tests python scripts/user_model_bench.py [--engine eager] [--rounds 15]`
(docs/models.md "Measured")."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from engines import example_inputs, load_engine
from flowmap.checkpoint import load_model
from flowmap.samplers import make_noise
from server.common.settings import ServerSettings
from server.core_process.build import build_core
from server.core_process.scheduler import Job

MODELS = ("mnist", "usermodels:mnist_as_user")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def engine_calls(engine: str, batch: int, rounds: int) -> dict[str, float]:
    """Median ms of one engine call at `batch` rows, alternating between the models."""
    models = [load_model(m) for m in MODELS]
    engines = [load_engine(engine, m, buckets=(batch,)) for m in models]
    inputs = example_inputs(models[0], batch)
    times = {m: [] for m in MODELS}
    for i in range(rounds):  # the order alternates too: neither always runs first
        for name, eng in list(zip(MODELS, engines, strict=True))[:: 1 - 2 * (i % 2)]:
            times[name].append(timed(lambda e=eng: e(*inputs)))
    return {m: 1e3 * statistics.median(v) for m, v in times.items()}


def mixed_batches(engine: str, rounds: int) -> dict[str, float]:
    """Median ms for 8 requests of 2 samples at steps 1, 2, 3, 4 (twice) through a core's scheduler."""
    settings = ServerSettings(engine=engine, device="cpu", max_steps=4, max_batch_size=32)
    cores = {m: build_core(m, settings)[0] for m in MODELS}

    def run(core) -> None:
        for i in range(8):
            core.submit(Job(noise=make_noise(2, [1, 28, 28], i), labels=[i % 10] * 2, steps=1 + i % 4))
        core.run_until_idle()

    times = {m: [] for m in MODELS}
    for i in range(rounds):
        for m, core in list(cores.items())[:: 1 - 2 * (i % 2)]:
            times[m].append(timed(lambda c=core: run(c)))
    return {m: 1e3 * statistics.median(v) for m, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--engine", default="eager")
    p.add_argument("--rounds", type=int, default=15)
    a = p.parse_args()
    torch.set_num_threads(1)
    print(f"engine {a.engine}, median ms of {a.rounds} paired rounds: checkpoint, user's, ratio")
    for batch in (1, 8, 32):
        report(f"engine call, batch {batch}", engine_calls(a.engine, batch, a.rounds))
    report("core, 8 requests at 1-4 steps", mixed_batches(a.engine, a.rounds))


def report(what: str, r: dict[str, float]) -> None:
    ckpt, user = r[MODELS[0]], r[MODELS[1]]
    print(f"{what:32s} {ckpt:8.2f} {user:8.2f}  {user / ckpt:.3f}")


if __name__ == "__main__":
    main()
