"""`flowmap serve` and `python -m server`: argparse side only (light to import: no torch, no FastAPI); flags
override FLOWMAP_* variables and defaults. Registered with `flowmap` as an entry point (pyproject.toml)."""

from __future__ import annotations

import sys

# flag -> (settings field, type, help); the settings docstrings in server/common/settings.py say more
FLAGS = {
    "--model": (
        "models",
        str,
        "model to serve: mnist, digits, digits_uncond, gmm8, a .safetensors path, or a user's model "
        "pkg.module:fn or .pt/.onnx with its manifest (docs/models.md; repeat for several; the first is the "
        "default)",
    ),
    "--engine": (
        "engine",
        str,
        "engine: eager, torchscript, compile, onnxruntime, ... (default: best for the device)",
    ),
    "--device": ("device", str, "auto, cpu, cuda or cuda:N (default auto)"),
    "--host": ("host", str, "address to bind (default 127.0.0.1)"),
    "--port": ("port", int, "TCP port (default 8000)"),
    "--health-port": (
        "health_port",
        int,
        "a second port answering only /healthz and /readyz from a thread, never behind request work",
    ),
    "--max-batch-size": ("max_batch_size", int, "most network rows per engine call (default 128)"),
    "--batch-knee": (
        "batch_knee",
        float,
        "fill batches up to the smallest size reaching this share of the best rows/s measured at start "
        "(default 0.9; 0: up to --max-batch-size)",
    ),
    "--batch-free-ms": (
        "batch_free_ms",
        float,
        "with --batch-knee, also fill batches up to the largest whose step took at most this long at "
        "start (default 10; 0: the knee alone)",
    ),
    "--max-queue": ("max_queue", int, "most waiting requests per model before 429 (default 256)"),
    "--max-queue-ms": (
        "max_queue_ms",
        float,
        "longest predicted queue wait before 429 with Retry-After (default 250)",
    ),
    "--max-wait-ms": (
        "max_wait_ms",
        float,
        "batching window of an idle engine core (default 0: start at once)",
    ),
    "--early-exit": (
        "early_exit",
        str,
        "on (default): rows whose deadline is at risk jump to data, waiting auto steps may be cut to admit; "
        "off: steps chosen once (benchmarks)",
    ),
    "--default-steps": ("default_steps", int, "steps when a request gives none (default 1)"),
    "--max-steps": ("max_steps", int, "largest steps a request may ask, and auto's cap (default 8)"),
    "--max-samples": ("max_samples", int, "largest num_samples per request (default 64)"),
    "--max-guidance": ("max_guidance", float, "largest |guidance_scale| (default 20)"),
    "--max-particles": (
        "max_particles",
        int,
        "most particles per steered sample; 0 refuses steer (default 16)",
    ),
    "--max-steer-rows": (
        "max_steer_rows",
        int,
        "most num_samples x particles per steered request (default 512)",
    ),
    "--max-steer-scale": ("max_steer_scale", float, "largest steer reward scale (default 100)"),
    "--steer-user-reward": (
        "steer_user_rewards",
        str,
        "a user reward package.module:function that steered requests may name (repeat; default none)",
    ),
    "--deadline-ms": ("request_timeout_ms", float, "request deadline when none is given (default 30000)"),
    "--drain-timeout": ("drain_timeout_s", float, "seconds accepted requests get after SIGTERM (default 30)"),
    "--api-key": ("api_key", str, "require this key on /v1 and /v2 model routes (prefer FLOWMAP_API_KEY)"),
    "--max-body-bytes": ("max_body_bytes", int, "largest request body before 413 (default 65536)"),
    "--batching": ("batching", str, "step (default) or request (whole-request baseline, for benchmarks)"),
    "--precision": (
        "precision",
        str,
        "fp32 (default), bf16 (the eager engine under autocast) or auto (each batch size on the faster)",
    ),
    "--threads": ("threads", int, "torch threads per engine core (default 1)"),
    "--api-workers": (
        "api_workers",
        str,
        "HTTP front-end processes, or auto: one per two CPUs (default auto)",
    ),
    "--max-connections": ("max_connections", int, "open connections per API process (default 1024)"),
    "--header-timeout": ("header_timeout_s", float, "seconds a request's headers may take (default 10)"),
    "--body-timeout": ("body_timeout_s", float, "seconds a request body may take before 408 (default 30)"),
    "--keep-alive": ("keep_alive_s", float, "seconds an idle keep-alive connection stays open (default 5)"),
    "--log-level": ("log_level", str, "critical, error, warning, info (default), debug"),
}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve models over HTTP (FastAPI + step-level batching)",
        description="Serve flow maps over HTTP. Every flag is also an environment "
        "variable FLOWMAP_<FIELD> (e.g. FLOWMAP_MAX_BATCH_SIZE); flags win.",
    )
    for flag, (dest, typ, help_) in FLAGS.items():
        action = "append" if dest in ("models", "steer_user_rewards") else "store"
        p.add_argument(flag, dest=dest, type=typ, action=action, default=None, help=help_)
    p.set_defaults(func=serve, torch_free=True)


def settings_from(args):
    """ServerSettings from the flags given, over the environment; ValueError naming the field."""
    from pydantic import ValidationError

    from server.common.settings import ServerSettings

    given = {d: getattr(args, d) for d, _, _ in FLAGS.values() if getattr(args, d, None) is not None}
    try:
        return ServerSettings(**given)
    except ValidationError as e:
        err = e.errors()[0]
        name = ".".join(str(v) for v in err["loc"]) or "settings"
        raise ValueError(f"invalid setting {name}: {err['msg']}") from None


def serve(args) -> int:
    from flowmap.errors import UserError

    try:
        settings = settings_from(args)
        from server.supervisor import run

        return run(settings)
    except (UserError, ValueError, OSError) as e:  # bad settings, a port in use: one line, no traceback
        print(f"flowmap serve: error: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None, prog: str = "python -m server") -> int:
    """`python -m server`: the same flags as `flowmap serve`."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog)
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)
