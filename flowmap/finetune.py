"""`flowmap finetune`: raise a reward by back-propagating it through the 1-2 step flow-map generator.

Loss per batch of noise z (flow-map reward fine-tuning; cf. Flow-Map GRPO / MeanFlowNFT, here with
the exact reward gradient since the generator is a differentiable 1-2 call network):
    L = -mean r(G_theta(z)) + weight * mean ||G_theta(z) - G_base(z)||^2 / D
G_theta is the K-step flow-map sampler of the trained net, G_base that of the frozen base model on the
same noise (and labels), D the sample dimension. EMA, atomic checkpoints, resume and a progress bar as
in `train`; reward and quality (FD, or energy distance for 2-D data) of the EMA net on fixed held-out
noise are logged every `eval_every` steps to OUT.log.jsonl and plotted to OUT.curves.png.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from flowmap.checkpoint import Model, atomic_write, load_model, save_checkpoint
from flowmap.labels import cycled
from flowmap.reward import evaluate_reward, make_reward
from flowmap.samplers import make_noise, sample_flowmap, uniform_grid
from flowmap.train import TrainingError, ema_update, resume_from, save_state, state_path, step_bar


@dataclass
class FinetuneConfig:
    """Resolved fine-tuning options; written as JSON next to the checkpoint."""

    model: str = "digits_uncond"  # shipped name or checkpoint: the base (kept frozen as the anchor)
    reward: str = "ink"  # a flowmap.reward spec
    out: str = "runs/finetune.safetensors"
    weight: float = 1.0  # regulariser weight (distance to the base model's samples on the same noise)
    sample_steps: int = 1  # generator steps back-propagated through (1 or 2)
    steps: int = 300
    batch_size: int = 128
    lr: float = 5e-5
    ema: float = 0.98
    grad_clip: float = 1.0
    seed: int = 0
    ckpt_every: int = 100
    eval_every: int = 50
    eval_n: int = 500
    threads: int = 1

    def __post_init__(self):
        for name in ("steps", "batch_size", "ckpt_every", "eval_every", "eval_n", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.sample_steps not in (1, 2, 3, 4):
            raise ValueError(f"sample_steps must be 1..4, got {self.sample_steps}")
        if self.weight < 0 or self.lr <= 0 or not 0 <= self.ema < 1:
            raise ValueError("weight must be >= 0, lr > 0 and ema in [0, 1)")

    @classmethod
    def from_dict(cls, d: dict) -> FinetuneConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class RewardLoss:
    """-r(G(z)) + weight * ||G(z) - G_base(z)||^2 / D per sample (G: K-step flow-map sampler)."""

    def __init__(self, reward, weight: float, steps: int):
        self.reward, self.weight, self.grid = reward, weight, uniform_grid(steps)

    def __call__(self, net, base, z, y) -> dict:
        x = sample_flowmap(net, z, self.grid, y)
        with torch.no_grad():
            xb = sample_flowmap(base, z, self.grid, y)
        r = evaluate_reward(self.reward, x)
        reg = ((x - xb) ** 2).flatten(1).mean(1)
        return {"loss": -r + self.weight * reg, "reward": r.detach(), "reg": reg.detach()}


class Quality:
    """Mean reward and distance to held-out data of a net's K-step samples on fixed noise."""

    def __init__(self, model: Model, reward, steps: int, n: int, seed: int):
        from flowmap.data import load_data

        self.reward, self.grid, self.image = reward, uniform_grid(steps), len(model.shape) == 3
        self.z = make_noise(n, model.shape, seed + 10_000)
        self.y = torch.tensor(cycled(n, model.num_classes)) if model.num_classes else None
        self.test = load_data(model.config["data"]["name"]).x_test
        if self.image:
            from flowmap.classifier import load_classifier

            self.clf = load_classifier()
            self.test_feats = self._feats(self.test)

    def _feats(self, x):
        return self.clf.features(x).double().numpy()

    @torch.no_grad()
    def __call__(self, net) -> dict:
        from flowmap.metrics import energy_distance, frechet_distance

        x = sample_flowmap(net, self.z, self.grid, self.y)
        row = {"reward": float(evaluate_reward(self.reward, x).mean())}
        if self.image:
            row["fd"] = frechet_distance(self._feats(x), self.test_feats)
        else:
            row["energy"] = energy_distance(x, self.test)
        return row


def finetune(cfg: FinetuneConfig, resume: bool | None = None, progress: bool = True) -> Path:
    """Fine-tune cfg.model toward cfg.reward; returns the checkpoint path (EMA weights).
    resume: as `train` (None continues a saved state of the same config and refuses another one)."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    base = load_model(cfg.model)
    if "user" in base.config["arch"]:  # its checkpoint could not be rebuilt by flowmap.nets
        raise ValueError(
            f"--model {cfg.model}: a user's model (docs/models.md) is served, not fine-tuned here"
        )
    reward = make_reward(cfg.reward, base.shape)
    net = copy.deepcopy(base.net).train().requires_grad_(True)
    ema = copy.deepcopy(base.net)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.0)
    out = Path(cfg.out)
    start = resume_from(state_path(out), cfg, (net, ema, opt), resume)
    if start == 0:
        log_path(out).unlink(missing_ok=True)
    atomic_write(
        out.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(asdict(cfg), indent=2))
    )
    parts = (
        RewardLoss(reward, cfg.weight, cfg.sample_steps),
        Quality(base, reward, cfg.sample_steps, cfg.eval_n, cfg.seed),
    )
    _loop(cfg, base, (net, ema, opt), parts, start, progress)
    plot_curves(log_path(out), out.with_suffix(".curves.png"))
    return out


def log_path(out: Path) -> Path:
    return out.with_suffix(".log.jsonl")


def _log(out: Path, row: dict) -> None:
    with open(log_path(out), "a") as f:
        f.write(json.dumps(row) + "\n")


def _update(cfg, net, opt, loss, step: int, out: Path) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
    if not torch.isfinite(norm):
        raise TrainingError(
            f"gradient norm is {norm.item()} at step {step}; the last checkpoint {out} is kept"
        )
    opt.step()


def _loop(cfg, base: Model, nets, parts, start: int, progress: bool) -> None:
    (net, ema, opt), (loss_fn, quality), out = nets, parts, Path(cfg.out)
    if start == 0:
        _log(out, {"step": 0, **quality(ema)})
    c, t0 = base.num_classes, time.perf_counter()
    bar = step_bar(start, cfg.steps, f"finetune {cfg.reward}", progress)
    for step in bar:
        z = torch.randn(cfg.batch_size, *base.shape)
        y = torch.randint(0, c, (cfg.batch_size,)) if c else None
        res = loss_fn(net, base.net, z, y)
        _update(cfg, net, opt, res["loss"].mean(), step, out)
        ema_update(ema, net, cfg.ema)
        bar.set_postfix(reward=f"{res['reward'].mean():.4f}", reg=f"{res['reg'].mean():.4f}")
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            _log(out, {"step": step + 1, "train_reward": float(res["reward"].mean()), **quality(ema)})
        if (step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps:
            summary = {"steps": step + 1, "seconds": round(time.perf_counter() - t0, 1), **asdict(cfg)}
            save_checkpoint(out, ema, base.config | {"name": out.stem, "finetune": summary})
            save_state(state_path(out), net, ema, opt, step + 1, cfg)
    bar.close()


def plot_curves(log: Path, png: Path) -> Path:
    """Reward and quality of the EMA net against fine-tuning step, from the .log.jsonl."""
    from flowmap.curves import plot_xy

    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    q = "fd" if "fd" in rows[0] else "energy"
    r0, q0 = rows[0]["reward"], rows[0][q]
    lines = {
        "reward / |base reward|": [(r["step"], r["reward"] / max(abs(r0), 1e-12)) for r in rows],
        f"{q} / base {q}": [(r["step"], r[q] / max(q0, 1e-12)) for r in rows],
    }
    return plot_xy(
        lines, png, "fine-tuning step", "relative to base", title=f"reward and {q} (held-out noise)"
    )
