"""Training loop: AdamW, EMA, gradient clipping, progress bar, atomic checkpoints, resume."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from tqdm import tqdm

from flowmap import distributed, memory
from flowmap.checkpoint import atomic_write, read_tensors, save_checkpoint, save_tensors
from flowmap.data import Dataset, load_data
from flowmap.errors import UserError
from flowmap.interpolants import get_interpolant
from flowmap.losses import SOLVERS, make_loss, uses
from flowmap.nets import build_net
from flowmap.teacher import load_teacher
from flowmap.timesamplers import TimeSampler


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    """Resolved training options; written as JSON next to the checkpoint."""

    data: str = "gmm8"  # gmm8, digits, a folder of images or an .npz
    method: str = "esd"  # a key of flowmap.losses.LOSSES
    out: str = "runs/model.safetensors"
    arch: str = "mlp"  # mlp or unet
    width: int = 256  # MLP width / U-Net base channels
    depth: int = 4  # MLP residual blocks
    mults: str = "1,2,2"  # U-Net channel multiplier per resolution level (28 -> 14 -> 7)
    attention: str = "lowest"  # U-Net self-attention: lowest (resolution only) or none
    steps: int = 5000
    batch_size: int = 256
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # constant or cosine (to lr_min_ratio * lr)
    lr_min_ratio: float = 0.05
    warmup: int = 200
    weight_decay: float = 0.0
    ema: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    ckpt_every: int = 1000
    interpolant: str = "linear"
    time_dist: str = "logit_normal"
    time_mean: float = -0.4
    time_std: float = 1.0
    diagonal: float | None = None  # fraction of pairs with s = t; None: the method's default
    adaptive_p: float | None = None
    label_dropout: float = 0.1
    labels: str = "use"  # use, or drop: train an unconditional model on labelled data (same split)
    guidance: float = 1.0  # guidance scale baked into training (esd, cd, distill, lmd, emd)
    teacher: str | None = None  # teacher checkpoint for cd, distill, lmd, emd
    teacher_dt: float = 0.0  # distill: the teacher solve's longest step; 0: a fixed count per pair
    teacher_solver: str = "heun"  # distill: heun (2 teacher calls a step) or ab2 (Adams-Bashforth, 1 call)
    teacher_min_steps: int = 1  # distill with teacher_dt: the fewest solver steps a pair takes, however short
    init: str | None = None  # start from this checkpoint's weights (a second stage, e.g. esd then esdt)
    threads: int = 1
    precision: str = "fp32"  # fp32, or bf16 (autocast; esd JVP targets on a bf16 copy, lsd JVP in fp32)
    micro_batch: int = 0  # rows per forward/backward; 0: the whole batch if it fits memory, else split

    def __post_init__(self):
        for name in ("steps", "batch_size", "ckpt_every", "threads", "teacher_min_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or not 0 <= self.ema < 1:
            raise ValueError("lr must be > 0 and ema in [0, 1)")
        if self.labels not in ("use", "drop"):
            raise ValueError(f"labels must be use or drop, got {self.labels!r}")
        if self.precision not in ("fp32", "bf16") or self.micro_batch < 0:
            raise ValueError(f"precision must be fp32 or bf16 (got {self.precision!r}), micro_batch >= 0")
        if not 0.0 <= self.teacher_dt <= 1.0:
            raise ValueError(
                f"teacher_dt must be in [0, 1] (0: the method's fixed step count), got {self.teacher_dt}"
            )
        if self.teacher_solver not in SOLVERS:
            names = ", ".join(SOLVERS)
            raise ValueError(f"teacher_solver must be one of {names}, got {self.teacher_solver!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be constant or cosine, got {self.lr_schedule!r}")

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def arch_config(cfg: TrainConfig, data: Dataset) -> dict:
    arch = {"name": cfg.arch, "shape": data.shape, "width": cfg.width, "num_classes": data.num_classes}
    if cfg.arch == "mlp":
        arch["depth"] = cfg.depth
    if cfg.arch == "unet":
        arch |= {"mults": cfg.mults, "attention": cfg.attention}
    return arch


def build_loss(cfg: TrainConfig):
    kwargs = {"interpolant": get_interpolant(cfg.interpolant), "label_dropout": cfg.label_dropout}
    default = make_loss(cfg.method)
    diagonal = cfg.diagonal if cfg.diagonal is not None else default.time.diagonal
    kwargs["time"] = TimeSampler(cfg.time_dist, cfg.time_mean, cfg.time_std, diagonal)
    if cfg.adaptive_p is not None and hasattr(default, "adaptive_p"):
        kwargs["adaptive_p"] = cfg.adaptive_p
    if cfg.guidance != 1.0:
        if not hasattr(default, "guidance"):
            raise ValueError(f"method {cfg.method!r} does not support --guidance (baked-in guidance)")
        kwargs["guidance"] = cfg.guidance
    if cfg.teacher_dt:
        if not hasattr(default, "ode_dt"):
            raise ValueError(
                f"method {cfg.method!r} does not solve the teacher ODE; drop --teacher-dt (distill)"
            )
        kwargs["ode_dt"] = cfg.teacher_dt
    if cfg.teacher_min_steps != 1:
        if not cfg.teacher_dt:
            raise ValueError("--teacher-min-steps bounds the steps --teacher-dt gives: pass --teacher-dt too")
        kwargs["min_steps"] = cfg.teacher_min_steps
    if cfg.teacher_solver != "heun":
        if not hasattr(default, "solver"):
            raise ValueError(
                f"method {cfg.method!r} does not solve the teacher ODE; drop --teacher-solver (distill)"
            )
        kwargs["solver"] = cfg.teacher_solver
    return make_loss(cfg.method, **kwargs)


def loss_extras(loss_fn, cfg: TrainConfig, data: Dataset, ema) -> dict:
    """The keywords a loss declares in `uses`: the EMA net and/or a frozen teacher fitting the data."""
    needs = uses(loss_fn)
    if cfg.teacher and "teacher" not in needs:
        raise ValueError(
            f"method {cfg.method!r} does not use a teacher; drop --teacher "
            "(distilling methods: cd, distill, lmd, emd)"
        )
    extras = {"ema": ema} if "ema" in needs else {}
    if "teacher" in needs:
        extras["teacher"] = load_teacher(cfg.teacher, data.shape, cfg.method)
    return extras


def lr_at(cfg: TrainConfig, step: int) -> float:
    warm = min(1.0, (step + 1) / max(1, cfg.warmup))
    if cfg.lr_schedule == "constant":
        return cfg.lr * warm
    frac = step / max(1, cfg.steps - 1)
    cos = cfg.lr_min_ratio + (1 - cfg.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
    return cfg.lr * warm * cos


def model_config(cfg: TrainConfig, data: Dataset, summary: dict) -> dict:
    return {
        "name": Path(cfg.out).stem,
        "arch": arch_config(cfg, data),
        "data": {
            "name": data.name,
            "shape": data.shape,
            "num_classes": data.num_classes,
            "image": data.image,
        },
        "interpolant": cfg.interpolant,
        "method": cfg.method,
        "guidance": {"baked_scale": cfg.guidance},
        "train": summary,
    }


def state_path(out: Path) -> Path:
    return out.with_name(out.stem + ".state.safetensors")


def save_state(path: Path, net, ema, opt, step: int, cfg: TrainConfig) -> None:
    tensors = {f"net.{k}": v for k, v in net.state_dict().items()}
    tensors |= {f"ema.{k}": v for k, v in ema.state_dict().items()}
    for i, st in opt.state_dict()["state"].items():
        tensors |= {f"opt.{i}.{k}": torch.as_tensor(v) for k, v in st.items()}
    tensors["rng"] = torch.get_rng_state()
    meta = {"step": str(step), "config": json.dumps(asdict(cfg))}
    save_tensors(path, tensors, meta)


def load_state(path: Path, net, ema, opt) -> int:
    tensors, meta = read_tensors(path)
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    sd = opt.state_dict()
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            sd["state"].setdefault(int(i), {})[name] = v
    opt.load_state_dict(sd)
    torch.set_rng_state(tensors["rng"])
    return int(meta["step"])


# options that do not change the training trajectory: a state saved under other values still matches
RESUME_IGNORES = ("threads", "ckpt_every", "micro_batch")


def config_changes(saved: dict, cfg: TrainConfig) -> list[str]:
    """What differs between a saved state's config and this one, as 'name old -> new'."""
    now = {k: v for k, v in asdict(cfg).items() if k not in RESUME_IGNORES}
    return [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in now.items() if saved.get(k, v) != v]


def resume_from(path: Path, cfg: TrainConfig, parts: tuple, resume: bool | None) -> int:
    """The step to start from. resume None (the default): continue a saved state of the same config,
    refuse to replace one of another config; True: continue it whatever changed; False: start over."""
    if resume is False or not path.exists():
        return 0
    tensors, meta = read_tensors(path)
    changes = config_changes(json.loads(meta.get("config", "{}")), cfg)
    if changes and resume is None:
        raise TrainingError(
            f"{path} holds a run with another config ({'; '.join(changes)}): pass --resume to continue"
            " it with this config, or --overwrite to start over and replace it"
        )
    try:
        step = load_state(path, *parts)
    except (RuntimeError, KeyError, ValueError) as e:
        raise TrainingError(f"{path}: cannot continue it with this config ({str(e)[:200]})") from None
    print(f"flowmap: resuming {cfg.out} from step {step} of {cfg.steps} ({path.name})", file=sys.stderr)
    return step


@torch.no_grad()
def ema_update(ema, net, decay: float) -> None:
    for pe, p in zip(ema.parameters(), net.parameters(), strict=True):
        pe.lerp_(p, 1 - decay)


def train(cfg: TrainConfig, resume: bool | None = None, progress: bool = True) -> Path:
    """Train a flow map; returns the checkpoint path (EMA weights). resume: see resume_from."""
    torch.set_num_threads(cfg.threads)
    ctx = distributed.setup()  # torchrun: one process per rank; otherwise single-process
    try:
        return _train(cfg, ctx, resume, progress and ctx.main)
    finally:
        distributed.teardown(ctx)


def init_weights(net, path: str, arch: dict) -> None:
    """Load a checkpoint's weights into `net`; a clear error if its architecture differs."""
    from flowmap.checkpoint import load_model

    model = load_model(path)
    if model.config.get("arch") != arch:
        raise ValueError(f"--init {path}: its architecture {model.config.get('arch')} differs from {arch}")
    net.load_state_dict(model.net.state_dict())


def _train(cfg: TrainConfig, ctx: distributed.DistContext, resume: bool | None, progress: bool) -> Path:
    distributed.local_batch(cfg.batch_size, ctx)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    data = load_data(cfg.data)
    if cfg.labels == "drop":  # unconditional on the same split: eval still finds the data by name
        data = dataclasses.replace(data, num_classes=0, y_train=None, y_test=None)
    loss_fn = build_loss(cfg)
    net = build_net(arch_config(cfg, data))
    if cfg.init:
        init_weights(net, cfg.init, arch_config(cfg, data))
    ema = copy.deepcopy(net).requires_grad_(False)
    extras = loss_extras(loss_fn, cfg, data, ema)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    out = Path(cfg.out)
    start = resume_from(state_path(out), cfg, (net, ema, opt), resume)
    if ctx.enabled:  # per-rank batches, noise and times; rank 0's weights everywhere
        torch.manual_seed(distributed.rank_seed(cfg.seed, ctx, start))
        distributed.broadcast_params(net, ctx)
        distributed.broadcast_params(ema, ctx)
    if ctx.main:
        atomic_write(
            out.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(asdict(cfg), indent=2))
        )
    return _loop(cfg, data, net, ema, opt, (loss_fn, extras, ctx), start, progress)


def _step(cfg, net, opt, loss, step: int, out: Path, ctx) -> None:
    """After backward: average the gradients over ranks, clip, step; a non-finite loss or gradient
    stops training."""
    if not torch.isfinite(distributed.mean_scalar(loss, ctx)):
        raise TrainingError(
            f"loss is {loss.item()} at step {step}; the last good checkpoint "
            f"{out} (and {state_path(out).name}) is kept"
        )
    for group in opt.param_groups:
        group["lr"] = lr_at(cfg, step)
    distributed.average_gradients(net, ctx)
    norm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
    if not torch.isfinite(norm):
        raise TrainingError(
            f"gradient norm is {norm.item()} at step {step}; the last good checkpoint "
            f"{out} (and {state_path(out).name}) is kept"
        )
    opt.step()


def per_sample_loss(cfg, net, loss_fn, extras):
    """(x0, y) -> per-sample losses [B] in float32, under bf16 autocast with --precision bf16."""
    kind = next(net.parameters()).device.type

    def run(x0, y):
        with torch.autocast(kind, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            return loss_fn(net, x0, y, **extras).float()

    return run


def micro_batch(cfg, net, run, data: Dataset, batch: int, progress: bool) -> int:
    """--micro-batch, or the whole batch if a probe's estimate fits the available memory (else split)."""
    if cfg.micro_batch:
        return min(cfg.micro_batch, batch)
    per_sample = memory.saved_bytes_per_sample(run, data.x_train, data.y_train)
    params = sum(p.numel() * p.element_size() for p in net.parameters())
    micro = memory.plan_micro_batch(batch, per_sample, params, memory.available_bytes())
    if micro < batch and progress:
        print(memory.describe(batch, micro, per_sample), file=sys.stderr)
    return micro


def backward(run, x0, y, micro: int):
    """Back-propagate the batch mean loss, in micro-batches of `micro` rows; returns the mean loss."""
    if micro >= len(x0):
        loss = run(x0, y).mean()
        loss.backward()
        return loss.detach()
    total = torch.zeros(())
    for x_part, idx in zip(x0.split(micro), torch.arange(len(x0)).split(micro), strict=True):
        part = run(x_part, None if y is None else y[idx]).sum() / len(x0)
        part.backward()
        total += part.detach()
    return total


def step_bar(start: int, steps: int, desc: str, progress: bool) -> tqdm:
    """The training progress bar over steps start..steps-1 (train and finetune)."""
    return tqdm(
        range(start, steps),
        initial=start,
        total=steps,
        disable=not progress,
        desc=desc,
        unit="step",
        dynamic_ncols=True,
    )


def _loop(cfg, data, net, ema, opt, loss_parts, start: int, progress: bool) -> Path:
    loss_fn, extras, ctx = loss_parts
    out, n, batch = Path(cfg.out), len(data.x_train), distributed.local_batch(cfg.batch_size, ctx)
    run = per_sample_loss(cfg, net, loss_fn, extras)
    micro = micro_batch(cfg, net, run, data, batch, progress)
    t0, ema_loss, seen = time.perf_counter(), None, 0
    bar = step_bar(start, cfg.steps, f"{cfg.method} {data.name}", progress)
    for step in bar:
        idx = torch.randint(0, n, (batch,))
        y = data.y_train[idx] if data.y_train is not None else None
        opt.zero_grad(set_to_none=True)
        loss = backward(run, data.x_train[idx], y, micro)
        _step(cfg, net, opt, loss, step, out, ctx)
        ema_update(ema, net, cfg.ema)
        seen += cfg.batch_size
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        bar.set_postfix(loss=f"{ema_loss:.4f}", samples_s=f"{seen / (time.perf_counter() - t0):.0f}")
        if ctx.main and ((step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps):
            summary = {
                "steps": step + 1,
                "loss": ema_loss,
                "batch_size": cfg.batch_size,
                "seconds": round(time.perf_counter() - t0, 1),
                "seed": cfg.seed,
                "processes": ctx.world,  # data-parallel ranks (torchrun); "seconds" is wall time
            }
            save_checkpoint(out, ema, model_config(cfg, data, summary))
            save_state(state_path(out), net, ema, opt, step + 1, cfg)
    bar.close()
    return out
