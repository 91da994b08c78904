"""Ray Serve peer for the benchmark: what a user would write with Ray Serve's `@serve.batch`.

One deployment (1 replica, 1 CPU, 1 torch thread) running our library: the same engine
(engines.load_engine), noise-from-seed (flowmap.samplers.make_noise), flow-map step
(server.core_process.ops.step) and PNG encoder (server.api_process.encode.png_images) as the LitServe
peer and the naive endpoint. Ray Serve's proxy takes HTTP; `@serve.batch` hands the replica up to
--max-batch-size requests (waiting at most
--batch-timeout s to fill a batch), grouped here by step count, one batch per step. Request and response
JSON have the shape of flowmap's POST /v1/generate (png output).

`python -m loadtests.ray_peer --model digits --engine onnxruntime --port P --max-batch-size 32`
(ready when GET /v1/generate returns 200: the replica is up and routed). Needs `pip install -e
".[bench]"` (ray[serve]); SIGTERM stops the local Ray instance it started.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch; Ray's workers inherit it

import argparse
import random
import shutil
import signal
import sys
import tempfile
import time

from flowmap.labels import cycled

BUCKETS = (1, 8, 32, 64, 128, 256)


class Generator:
    """The model side: load once, then compute a list of decoded requests as batches by step count."""

    def __init__(self, model: str, engine: str):
        import torch

        from engines import load_engine
        from flowmap.checkpoint import load_model

        torch.set_num_threads(1)
        self.model = load_model(model)
        self.engine = load_engine(engine, self.model, device="cpu", buckets=BUCKETS)
        self.engine.warmup()

    def decode(self, body: dict) -> tuple[int, int, list[int]]:
        steps, n = int(body.get("steps", 1)), int(body.get("num_samples", 1))
        if not (1 <= steps <= 8 and 1 <= n <= 64):
            raise ValueError("steps must be in 1..8 and num_samples in 1..64")
        seed = body.get("seed")
        seed = random.getrandbits(31) if seed is None else int(seed)
        c, label = self.model.num_classes, body.get("class_label")
        labels = label if isinstance(label, list) else ([label] * n if label is not None else cycled(n, c))
        if len(labels) != n:
            raise ValueError("class_label list must have num_samples entries")
        return steps, seed, [int(v) for v in labels]

    def compute(self, reqs: list[tuple[int, int, list[int]]]) -> list[list[str]]:
        """PNG images per request; each step count's requests run as one batch per step."""
        import torch

        from loadtests.peer_response import images_by_request

        with torch.inference_mode():
            return images_by_request(self.engine, self.model.shape, reqs)

    def response(self, req: tuple[int, int, list[int]], images: list[str], ms: float) -> dict:
        from loadtests.peer_response import peer_response

        return peer_response(self.model.name, self.model.shape, req, images, ms)


def build(model: str, engine: str, max_batch: int, timeout: float):
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 1}, max_ongoing_requests=1024)
    class FlowMapRay:
        def __init__(self):
            self.gen = Generator(model, engine)

        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=timeout)
        async def batch(self, reqs: list[tuple]) -> list[dict]:
            t0 = time.perf_counter()
            images = self.gen.compute(reqs)
            ms = 1e3 * (time.perf_counter() - t0)
            return [self.gen.response(r, im, ms) for r, im in zip(reqs, images, strict=True)]

        async def __call__(self, request: Request):
            if request.method == "GET":  # readiness: answered once the replica is up and routed
                return JSONResponse({"status": "ready"})
            try:
                req = self.gen.decode(await request.json())
            except (ValueError, TypeError) as e:
                return JSONResponse({"detail": str(e)}, status_code=422)
            return JSONResponse(await self.batch(req))

    return FlowMapRay.bind()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="digits")
    p.add_argument("--engine", default="onnxruntime")
    p.add_argument("--port", type=int, default=8003)
    p.add_argument("--max-batch-size", type=int, default=32, help="requests per @serve.batch call")
    p.add_argument("--batch-timeout", type=float, default=0.005, help="seconds to fill a batch")
    a = p.parse_args(argv)
    import ray
    from ray import serve

    tmp = tempfile.mkdtemp(prefix="raypeer-")  # Ray's session files, removed on exit
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False, _temp_dir=tmp)
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    serve.run(build(a.model, a.engine, a.max_batch_size, a.batch_timeout), route_prefix="/v1/generate")
    # ray.shutdown() alone: serve.shutdown() can hang under load
    stop = lambda *_: (ray.shutdown(), shutil.rmtree(tmp, ignore_errors=True), sys.exit(0))  # noqa: E731
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
