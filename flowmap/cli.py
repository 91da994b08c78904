"""The `flowmap` command: train, sample, eval; export/bench (engines) and serve (server) plug in."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from importlib import metadata
from pathlib import Path

from flowmap.errors import UserError
from flowmap.presets import PRESETS

# the packages above flowmap plug in through entry points (pyproject.toml), never imported here by name:
# command name -> register(subparsers) of the package adding it
COMMANDS = "flowmap.commands"


def _config_parser(sub, name: str, config, presets: bool, **texts) -> argparse.ArgumentParser:
    """A command whose flags are the fields of a config dataclass (--field-name), then --resume /
    --overwrite and --no-progress. presets: flags default to None (the data set's preset, then the
    config's default fill them in later); else to the config's default."""
    p = sub.add_parser(name, **texts)
    for f in dataclasses.fields(config):
        kind = {"int": int, "float": float, "str": str}.get(str(f.type).split(" ")[0], float)
        p.add_argument(
            "--" + f.name.replace("_", "-"),
            type=kind,
            default=None if presets else f.default,
            required=presets and f.name in ("data", "method", "out"),
            help=f"(default: {f.default})",
        )
    _again_flags(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _train_parser(sub) -> None:
    from flowmap.train import TrainConfig

    description = (
        "Train a flow map. Options left unset take the data set's preset (flowmap/presets.py), then the "
        "TrainConfig default."
    )
    p = _config_parser(sub, "train", TrainConfig, True, help="train a flow map", description=description)
    p.set_defaults(func=cmd_train)


def _again_flags(p) -> None:
    """--resume / --overwrite: what a re-run does with OUT's saved state (train and finetune alike)."""
    again = p.add_mutually_exclusive_group()
    again.add_argument(
        "--resume",
        action="store_true",
        help="continue OUT's .state.safetensors even if the config changed (default: continue it only "
        "if the config is the same, refuse otherwise)",
    )
    again.add_argument("--overwrite", action="store_true", help="start over, replacing OUT's saved state")


def _again(args) -> bool | None:
    return True if args.resume else (False if args.overwrite else None)


def cmd_train(args) -> int:
    from flowmap.train import TrainConfig, train

    given = {k: v for k, v in vars(args).items() if v is not None and k not in ("func", "command")}
    cfg = TrainConfig.from_dict(PRESETS.get(given["data"], {}) | given)
    out = train(cfg, resume=_again(args), progress=not args.no_progress)
    print(f"wrote {out}")
    return 0


def _finetune_parser(sub) -> None:
    from flowmap.finetune import FinetuneConfig

    description = (
        "Back-propagate a reward (flowmap.reward spec) through the 1-4 step generator, regularised toward "
        "the frozen base model's samples on the same noise (docs/steering.md)."
    )
    help_ = "fine-tune a flow map toward a reward"
    p = _config_parser(sub, "finetune", FinetuneConfig, False, help=help_, description=description)
    p.set_defaults(func=cmd_finetune)


def cmd_finetune(args) -> int:
    from flowmap.finetune import FinetuneConfig, finetune

    cfg = FinetuneConfig.from_dict(vars(args))
    print(f"wrote {finetune(cfg, resume=_again(args), progress=not args.no_progress)}")
    return 0


def _sample_parser(sub) -> None:
    from flowmap.generate import SAMPLER_NAMES

    p = sub.add_parser("sample", help="generate samples to .npy or .png")
    p.add_argument(
        "--model",
        default="mnist",
        help="shipped name (mnist, digits, digits_uncond, gmm8), checkpoint path, or a user's model "
        "pkg.module:fn or .pt/.onnx with its manifest (docs/models.md)",
    )
    p.add_argument("--steps", type=int, default=1)
    p.add_argument(
        "--n", type=int, default=None, help="number of samples (default 64, or the rows of --noise)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--class",
        dest="class_label",
        type=int,
        default=None,
        help="class label (conditional models; default: cycle through classes)",
    )
    p.add_argument("--noise", default=None, help=".npy of t=1 noise (N, *shape) to map instead of drawing it")
    p.add_argument(
        "--guidance", type=float, default=1.0, help="classifier-free guidance scale at sampling time"
    )
    p.add_argument("--sampler", default="flowmap", choices=SAMPLER_NAMES)
    p.add_argument("--gamma", type=float, default=1.0, help="re-noise fraction for --sampler stochastic")
    p.add_argument("--png-scale", type=int, default=4, help="pixel upscaling of PNG grids")
    p.add_argument("--out", required=True, help="FILE.npy (float32 samples in model space) or FILE.png")
    _steer_args(p)
    p.set_defaults(func=cmd_sample)


def _steer_args(p) -> None:
    g = p.add_argument_group("reward steering (docs/steering.md)")
    g.add_argument("--steer", default=None, metavar="REWARD", help="class:C, ink, mode:K or pkg.mod:fn")
    g.add_argument("--steer-scale", type=float, default=1.0, help="reward scale (inverse temperature)")
    g.add_argument(
        "--steer-method", default="sir", help="sir (resampling), best (best-of-N), guide (gradient)"
    )
    g.add_argument("--particles", type=int, default=8, help="particles per sample (sir, best)")
    g.add_argument("--steer-iters", type=int, default=1, help="guide: gradient steps per sampling step")
    g.add_argument("--lookahead", default="flowmap", help="flowmap (X_{t,0}) or denoiser (x - t u(x,t,t))")


def cmd_sample(args) -> int:
    import numpy as np

    from flowmap.checkpoint import load_model
    from flowmap.generate import generate, load_noise
    from flowmap.images import save_png
    from flowmap.samplers import make_noise

    out = Path(args.out)
    if out.suffix not in (".npy", ".png"):
        raise ValueError(f"--out {out}: must end in .npy or .png")
    if args.n is not None and args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    model = load_model(args.model)
    if args.steer:
        return _sample_steered(args, model, out)
    if args.noise:
        noise = load_noise(args.noise, model.shape)
        if args.n is not None and args.n != len(noise):
            raise ValueError(f"--n {args.n} but --noise holds {len(noise)} rows")
    else:
        noise = make_noise(args.n or 64, model.shape, args.seed)
    x = generate(
        model, args.steps, noise, args.class_label, args.guidance, args.sampler, args.gamma, args.seed
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, x.float().numpy())
    else:
        image = bool(model.config["data"].get("image", len(model.shape) == 3))
        nrow = model.num_classes if model.num_classes and args.class_label is None else None
        save_png(out, x, image, nrow=nrow, scale=args.png_scale)
    print(f"wrote {len(x)} samples ({args.steps} step{'s' * (args.steps > 1)}) to {out}")
    return 0


def _sample_steered(args, model, out: Path) -> int:
    import numpy as np

    from flowmap.generate import load_noise
    from flowmap.images import save_png
    from flowmap.samplers import make_noise
    from flowmap.steering import SteerSpec, steer_model, steer_noise_rows

    if args.steps < 1 or args.sampler != "flowmap":
        raise ValueError(
            f"--steer needs --steps >= 1 and --sampler flowmap (got {args.steps}, {args.sampler})"
        )
    spec = SteerSpec(
        args.steer, args.steer_scale, args.steer_method, args.particles, args.lookahead, args.steer_iters
    )
    rows = steer_noise_rows(spec, args.n or 64)
    noise = load_noise(args.noise, model.shape) if args.noise else make_noise(rows, model.shape, args.seed)
    res = steer_model(model, args.steps, noise, spec, args.class_label, args.guidance, args.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, res.x.float().numpy())
    else:
        save_png(
            out, res.x, bool(model.config["data"].get("image", len(model.shape) == 3)), scale=args.png_scale
        )
    print(f"wrote {len(res.x)} steered samples to {out}: {res.calls_per_sample:g} network calls per sample")
    return 0


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="measure quality on held-out data")
    p.add_argument("--model", default="mnist", help="shipped name or checkpoint; several: a,b,c")
    p.add_argument("--steps", default="1,2,4", help="comma-separated step counts")
    p.add_argument("--sampler", default="auto", help="auto (flow map; re-noising for ct/cd), flowmap, ...")
    p.add_argument("--ode-steps", default="", help="also the teacher ODE (Heun) at these steps, e.g. 1,2,4")
    p.add_argument("--plot", default=None, help="PNG of quality against steps, one line per model/sampler")
    p.add_argument("--grids", default=None, help="folder for sample grids (PNG) per model and step count")
    p.add_argument("--n", type=int, default=4096, help="gmm8: noise draws")
    p.add_argument("--per-class", type=int, default=100, help="images: samples per class")
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="the network's compute precision; bf16: as `flowmap serve --precision bf16` samples (autocast)",
    )
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    from flowmap.evaluate import evaluate_many, format_table, parse_steps

    results = evaluate_many(
        args.model.split(","),
        parse_steps(args.steps, "--steps"),
        parse_steps(args.ode_steps, "--ode-steps"),
        n=args.n,
        per_class=args.per_class,
        seed=args.seed,
        guidance=args.guidance,
        sampler=args.sampler,
        plot=args.plot,
        grids=args.grids,
        precision=args.precision,
        progress=not args.no_progress,
    )
    print("\n\n".join(format_table(r) for r in results))
    if args.json:
        Path(args.json).write_text(json.dumps(results[0] if len(results) == 1 else results, indent=2))
    return 0


def plugins() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=COMMANDS)}


def _register(sub, entry_points) -> None:
    for ep in {ep.value: ep for ep in entry_points}.values():  # one register may add several commands
        try:
            ep.load()(sub)
        except ImportError:
            pass  # the package's extra is not installed; its commands are absent


def build_parser(only: metadata.EntryPoint | None = None) -> argparse.ArgumentParser:
    """Every command; or, for a plugin's command, only that plugin's (`flowmap serve` imports no torch)."""
    parser = argparse.ArgumentParser(prog="flowmap", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    if only is not None:
        _register(sub, [only])
        return parser
    _train_parser(sub)
    _sample_parser(sub)
    _eval_parser(sub)
    _finetune_parser(sub)
    _register(sub, plugins().values())
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(plugins().get(argv[0]) if argv else None).parse_args(argv)
    if getattr(args, "torch_free", False):  # runs without torch and reports its own errors (serve)
        return args.func(args)
    import torch

    torch.set_num_threads(int(getattr(args, "threads", None) or 1))
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("flowmap: interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, OSError) as e:  # bad input, config or path: one line, no traceback
        print(f"flowmap: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
