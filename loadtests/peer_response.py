"""The /v1/generate response body the peers (LitServe, Ray Serve) send: flowmap's fields, so a client and
the benchmarks read every server alike. The peers run the deterministic flow-map sampler, one network
call per step and sample."""

from __future__ import annotations


def peer_response(model: str, shape, req: tuple[int, int, list[int]], images: list[str], ms: float) -> dict:
    steps, seed, labels = req
    return {
        "model": model,
        "steps": steps,
        "seed": seed,
        "num_samples": len(labels),
        "class_labels": labels,
        "guidance_scale": 1.0,
        "output": "png",
        "shape": list(shape),
        "images": images,
        "array": None,
        "sampler": "flowmap",
        "network_calls_per_sample": steps,
        "timings": {"queue_ms": 0.0, "compute_ms": ms, "total_ms": ms},  # the whole batch's compute
    }
