"""Baseline endpoints for the benchmark, serving the same model and the same response format.

- POST /naive: one request at a time, its own samples as one batch per step, no cross-request
  batching (written at its best: the same engine, compute on one dedicated thread, the same encoder).
- POST /trivial: the HTTP ceiling: validates the same request schema and returns a canned response of
  the size a real one would have (built once per num_samples by the naive path).

`python -m loadtests.baselines --model M --engine E --port P`
"""

# no `from __future__ import annotations`: the request model is built at runtime

import argparse
import asyncio
import gc
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from fastapi import FastAPI
from fastapi.responses import Response

from flowmap.checkpoint import load_model
from flowmap.labels import cycled
from flowmap.samplers import make_noise, uniform_grid
from server.api_process.encode import npy_base64, png_images
from server.api_process.schemas import GenerateResponse, generate_request_model
from server.common.settings import ServerSettings
from server.core_process import ops


def build(model_name: str, engine_name: str, settings: ServerSettings) -> FastAPI:
    from engines import load_engine

    model = load_model(model_name)
    engine = load_engine(engine_name, model, device="cpu", buckets=(1, 8, 32, 64))
    engine.warmup()
    pool = ThreadPoolExecutor(max_workers=1)
    canned: dict[int, bytes] = {}
    GenerateRequest = generate_request_model(settings)
    app = FastAPI()

    @torch.inference_mode()
    def compute(req) -> GenerateResponse:
        t0 = time.perf_counter()
        n, steps, seed = req.num_samples, req.steps or 1, req.seed or 0
        x = make_noise(n, model.shape, seed)  # [n, *shape]
        y = torch.tensor(
            [req.class_label] * n if req.class_label is not None else cycled(n, model.num_classes),
            dtype=torch.long,
        )
        for s, t in zip(uniform_grid(steps)[:-1].tolist(), uniform_grid(steps)[1:].tolist(), strict=True):
            sv, tv = torch.full((n,), s), torch.full((n,), t)
            x = ops.step(x, engine(x, sv, tv, y), sv, tv)
        images = png_images(x) if req.output == "png" else None
        ms = 1e3 * (time.perf_counter() - t0)
        return GenerateResponse(
            model=model.name,
            steps=steps,
            seed=seed,
            num_samples=n,
            class_labels=y.tolist(),
            guidance_scale=1.0,
            output=req.output,
            shape=model.shape,
            images=images,
            array=None if images else npy_base64(x),
            timings={"queue_ms": 0.0, "compute_ms": ms, "total_ms": ms},
        )

    @app.post("/naive", response_model=GenerateResponse)
    async def naive(req: GenerateRequest):  # type: ignore[valid-type]
        return await asyncio.get_running_loop().run_in_executor(pool, compute, req)

    @app.post("/trivial")
    async def trivial(req: GenerateRequest):  # type: ignore[valid-type]
        if req.num_samples not in canned:
            canned[req.num_samples] = compute(req).model_dump_json().encode()
        return Response(canned[req.num_samples], media_type="application/json")

    return app


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="digits")
    p.add_argument("--engine", default="eager")
    p.add_argument("--port", type=int, default=8001)
    a = p.parse_args()
    torch.set_num_threads(1)
    app = build(a.model, a.engine, ServerSettings(models=[a.model]))
    gc.collect()
    gc.freeze()  # as the server does after warm-up (no long full collections under load)
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
