"""Checkpoints: one .safetensors file, EMA weights + JSON config in its metadata. Never pickle."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from flowmap.errors import UserError
from flowmap.model import Model
from flowmap.nets import build_net

FORMAT = "flowmap/1"
ASSETS = Path(__file__).parent / "assets"
SHIPPED = ("mnist", "digits", "gmm8", "digits_uncond")


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, unreadable, or whose config does not match its tensors."""


def atomic_write(path: Path, write) -> None:
    """Write via a temp file in the same folder, fsync, then rename (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_tensors(path: Path, tensors: dict, metadata: dict) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def save_checkpoint(path: Path, net: torch.nn.Module, config: dict) -> None:
    save_tensors(path, net.state_dict(), {"format": FORMAT, "config": json.dumps(config)})


def read_tensors(path: Path) -> tuple[dict, dict]:
    """(tensors, metadata) of a .safetensors file; CheckpointError if it does not parse."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types and OSError
        raise CheckpointError(f"{path}: not a valid .safetensors file ({e})") from None
    return tensors, meta


def read_config(path: Path, meta: dict) -> dict:
    if meta.get("format") != FORMAT or "config" not in meta:
        raise CheckpointError(f"{path}: not a flowmap checkpoint (metadata format {meta.get('format')!r})")
    try:
        config = json.loads(meta["config"])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: config metadata is not valid JSON ({e})") from None
    for key in ("arch", "data"):
        if key not in config:
            raise CheckpointError(f"{path}: config lacks {key!r}")
    return config


def load_checkpoint(path: Path) -> Model:
    """Load and validate a checkpoint: the net built from its config must match its tensors."""
    path = Path(path)
    tensors, meta = read_tensors(path)
    config = read_config(path, meta)
    try:
        net = build_net(config["arch"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad architecture config {config['arch']} ({e})") from None
    expected = net.state_dict()
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{path}: tensors do not match config: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    for k, v in expected.items():
        if v.shape != tensors[k].shape:
            raise CheckpointError(
                f"{path}: tensor {k!r} has shape {list(tensors[k].shape)}, config implies {list(v.shape)}"
            )
    check_finite(path, tensors)
    net.load_state_dict(tensors)
    return Model(net.eval().requires_grad_(False), config, path)


def check_finite(path: Path, tensors: dict) -> None:
    """Refuse weights holding NaN or inf (they would only ever produce NaN samples), naming the tensor."""
    for k, v in tensors.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            bad = int((~torch.isfinite(v)).sum())
            raise CheckpointError(f"{path}: tensor {k!r} holds {bad} NaN/inf value(s) of {v.numel()}")


def resolve_model(name_or_path: str) -> Path:
    """A shipped model name (mnist, digits, gmm8, digits_uncond) or a checkpoint path."""
    if name_or_path in SHIPPED:
        return ASSETS / f"{name_or_path}.safetensors"
    path = Path(name_or_path)
    if path.suffix != ".safetensors" and not path.exists():
        raise CheckpointError(
            f"unknown model {name_or_path!r}: not a shipped model "
            f"({', '.join(SHIPPED)}) and no such checkpoint file"
        )
    return path


def load_model(name_or_path: str) -> Model:
    """A shipped model by name (then that is its name, whatever its file says), a checkpoint path, or a
    user's model: a factory `pkg.module:fn` or a .pt / .onnx file with its manifest (flowmap.user)."""
    from flowmap.user.load import is_user_model, load_user_model

    if name_or_path not in SHIPPED and is_user_model(name_or_path):
        return load_user_model(name_or_path)
    model = load_checkpoint(resolve_model(name_or_path))
    if name_or_path in SHIPPED and model.config.get("name") != name_or_path:
        model.config = {**model.config, "name": name_or_path}
    return model
