"""LitServe peer for the benchmark: what a user would write with LitServe's own request batching.

Same engine (engines.load_engine), same noise-from-seed (flowmap.samplers.make_noise), same flow-map
step (server.core_process.ops.step, as the naive baseline), same PNG encoder
(server.api_process.encode.png_images); each batch LitServe hands over is grouped by step count and each
group runs as one batch per step. The request and response JSON have the shape of flowmap's POST
/v1/generate. LitServe puts HTTP in its own process and the model in one worker process
(workers_per_device=1, accelerator cpu, 1 torch thread).

`python -m loadtests.litserve_peer --model digits --engine onnxruntime --port P --max-batch-size 8`
(ready when GET /health returns 200). Needs the `bench` extra: pip install -e ".[bench]".
"""

# no `from __future__ import annotations`: LitServe reads decode_request's annotation at runtime

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch; the spawned worker inherits it

import argparse
import random
import time
from typing import Literal

import litserve as ls
import torch
from pydantic import BaseModel, ConfigDict, Field

from flowmap.labels import cycled
from loadtests.peer_response import images_by_request, peer_response

BUCKETS = (1, 8, 32, 64, 128, 256)  # up to 32 requests x 8 samples in one call


class Generate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    steps: int = Field(1, ge=1, le=8)
    num_samples: int = Field(1, ge=1, le=64)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    class_label: int | None = Field(None, ge=0)
    output: Literal["png"] = "png"


class FlowMapAPI(ls.LitAPI):
    def __init__(self, model: str, engine: str, **batching):
        super().__init__(api_path="/v1/generate", **batching)
        self.model_name, self.engine_name = model, engine

    def setup(self, device):
        from engines import load_engine
        from flowmap.checkpoint import load_model

        torch.set_num_threads(1)
        self.model = load_model(self.model_name)
        self.engine = load_engine(self.engine_name, self.model, device="cpu", buckets=BUCKETS)
        self.engine.warmup()

    def decode_request(self, request: Generate):
        seed = request.seed if request.seed is not None else random.getrandbits(31)
        n, label = request.num_samples, request.class_label
        labels = [label] * n if label is not None else cycled(n, self.model.num_classes)
        return request.steps, seed, labels

    def batch(self, inputs):
        return inputs  # a list of decoded requests; predict groups them by step count

    @torch.inference_mode()
    def predict(self, reqs):
        if self.max_batch_size == 1:  # LitServe's unbatched loop hands over one request
            return self.predict([reqs])[0]
        t0 = time.perf_counter()
        images = images_by_request(self.engine, self.model.shape, reqs)
        ms = 1e3 * (time.perf_counter() - t0)
        return [(r, imgs, ms) for r, imgs in zip(reqs, images, strict=True)]

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        req, images, ms = output
        return peer_response(self.model.name, self.model.shape, req, images, ms)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="digits")
    p.add_argument("--engine", default="onnxruntime")
    p.add_argument("--port", type=int, default=8002)
    p.add_argument("--max-batch-size", type=int, default=8, help="requests per batch")
    p.add_argument("--batch-timeout", type=float, default=0.005, help="seconds to fill a batch")
    p.add_argument("--no-fast-queue", action="store_true", help="multiprocessing queues instead of ZeroMQ")
    a = p.parse_args(argv)
    api = FlowMapAPI(a.model, a.engine, max_batch_size=a.max_batch_size, batch_timeout=a.batch_timeout)
    server = ls.LitServer(
        api, accelerator="cpu", devices=1, workers_per_device=1, timeout=60, fast_queue=not a.no_fast_queue
    )
    server.run(host="127.0.0.1", port=a.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
