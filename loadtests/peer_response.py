"""What the peers (LitServe, Ray Serve) share: their batch computation (requests grouped by step count,
the deterministic flow-map sampler, one network call per step) and their /v1/generate response body,
with flowmap's fields, so a client and the benchmarks read every server alike."""

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


def images_by_request(engine, shape, reqs: list[tuple[int, int, list[int]]]) -> list[list[str]]:
    """PNG images per request (steps, seed, labels); requests of one step count share each network call.
    The caller holds torch's inference mode."""
    import torch

    from flowmap.samplers import make_noise, uniform_grid
    from server.api_process.encode import png_images
    from server.core_process import ops

    out: list = [None] * len(reqs)
    for steps in {r[0] for r in reqs}:
        idx = [i for i, r in enumerate(reqs) if r[0] == steps]
        x = torch.cat([make_noise(len(reqs[i][2]), shape, reqs[i][1]) for i in idx])
        y = torch.tensor([c for i in idx for c in reqs[i][2]], dtype=torch.long)
        grid = uniform_grid(steps).tolist()
        for s, t in zip(grid[:-1], grid[1:], strict=True):
            sv, tv = torch.full((len(y),), s), torch.full((len(y),), t)
            x = ops.step(x, engine(x, sv, tv, y), sv, tv)
        images, at = png_images(x), 0
        for i in idx:
            n = len(reqs[i][2])
            out[i], at = images[at : at + n], at + n
    return out
