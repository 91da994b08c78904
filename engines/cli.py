"""`flowmap export` and `flowmap bench` (plugged into flowmap/cli.py via `register(subparsers)`).

Light to import: torch and the engines are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flowmap.errors import UserError

EXPORTABLE = ("torchscript", "onnxruntime", "tensorrt")
# "eager-bf16": a precision variant (engines.base.VARIANTS)
BENCH_ENGINES = ("eager", "torchscript", "onnxruntime", "compile", "tensorrt", "eager-bf16")


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _names(text: str) -> list[str]:
    names = [v for v in text.split(",") if v]
    bad = [n for n in names if n not in BENCH_ENGINES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown engine(s) {bad}; choose from {', '.join(BENCH_ENGINES)}")
    return names


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a deployable engine artifact (+ sidecar JSON)")
    p.add_argument("--model", default="mnist", help="shipped model name or checkpoint path")
    p.add_argument("--engine", required=True, choices=EXPORTABLE)
    p.add_argument("--out", required=True, help="artifact path (.pt, .onnx or .plan)")
    p.add_argument("--device", default="cpu", help="device to build on (tensorrt needs cuda)")
    p.add_argument("--buckets", type=_ints, default=[1, 8, 32, 128], help="batch buckets, e.g. 1,8,32,128")
    p.add_argument("--fp16", action="store_true", help="tensorrt only: allow fp16 kernels")
    p.set_defaults(func=export_cmd)

    p = subparsers.add_parser("bench", help="benchmark engines x batch sizes and the fused step")
    p.add_argument(
        "--model",
        action="append",
        help="model name or checkpoint (repeatable; default: the shipped models present)",
    )
    p.add_argument(
        "--engines",
        type=_names,
        default=["eager", "torchscript", "onnxruntime"],
        help=f"comma-separated, from {','.join(BENCH_ENGINES)}",
    )
    p.add_argument("--batches", type=_ints, default=[1, 8, 32, 128])
    p.add_argument("--iters", type=int, default=100, help="timed calls per engine and batch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on the shared CPU boxes)")
    p.add_argument("--no-step", action="store_true", help="skip the fused-step benchmark")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.set_defaults(func=bench_cmd)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def export_cmd(args) -> int:
    import torch

    from engines.artifacts import export_artifact
    from flowmap.checkpoint import load_model

    try:
        model = load_model(args.model)
        dtype = torch.float16 if args.fp16 else torch.float32
        out = export_artifact(model, args.engine, args.out, args.device, tuple(args.buckets), dtype)
    except (UserError, OSError) as e:
        return _fail(str(e))
    print(f"wrote {out} and {out}.json ({args.engine}, model {model.name})")
    return 0


def _models(names: list[str] | None) -> list:
    from flowmap.checkpoint import ASSETS, SHIPPED, load_model

    if not names:
        names = [n for n in SHIPPED if (ASSETS / f"{n}.safetensors").is_file()]
        if not names:
            raise FileNotFoundError("no shipped models found; pass --model CKPT")
    return [load_model(n) for n in names]


def bench_cmd(args) -> int:
    import torch

    from engines.bench import format_table, run

    torch.set_num_threads(args.threads)
    if args.iters < 1:
        return _fail(f"--iters must be >= 1, got {args.iters}")
    try:
        models = _models(args.model)
    except (UserError, FileNotFoundError) as e:
        return _fail(str(e))
    result = run(models, args.engines, args.batches, args.iters, args.device, step=not args.no_step)
    print(format_table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m engines.cli bench ...`) until flowmap/cli.py wires register()."""
    parser = argparse.ArgumentParser(prog="flowmap")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
