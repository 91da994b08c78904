"""Loading a user's model in one of its forms (docs/models.md), checked before it is returned:

- an operator-named factory `pkg.module:fn`: fn() returns (module, spec), spec a UserSpec or a dict;
- a TorchScript `.pt` or ONNX `.onnx` file with a JSON manifest beside it (`model.pt` -> `model.json`)
  holding the spec's fields. TorchScript is read with torch.jit.load; nothing is ever unpickled.

Only the operator names these (the CLI's --model, the server's --model): a client names a served model
by its name and never makes the server import anything.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import torch

from flowmap.model import Model
from flowmap.user.adapt import UserNet
from flowmap.user.checks import run_checks
from flowmap.user.spec import UserModelError, UserSpec

FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
FILE_SUFFIXES = (".pt", ".onnx")


def is_user_model(name: str) -> bool:
    """Whether `name` names a user's model: a factory `pkg.module:fn` or a .pt / .onnx file."""
    return bool(FACTORY.match(name)) or Path(name).suffix in FILE_SUFFIXES


def load_user_model(name: str) -> Model:
    """The user's model `name` as a flowmap Model (net: UserNet), after every load check."""
    module, spec, path = _load_factory(name) if FACTORY.match(name) else _load_file(name)
    spec = UserSpec.of(spec, name)
    shown = spec.name or (name.rsplit(":", 1)[1] if FACTORY.match(name) else path.stem)
    if isinstance(module, torch.nn.Module):
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
    net = UserNet(module, spec)
    run_checks(net, f"{shown!r} ({name})")
    return Model(net, config_of(spec, shown, name), path)


def config_of(spec: UserSpec, name: str, source: str) -> dict:
    """The flowmap config of a user's model (what samplers, the server and the CLI read)."""
    data = {"name": spec.data, "shape": list(spec.shape), "num_classes": spec.num_classes}
    if spec.image is not None:
        data["image"] = spec.image
    return {
        "name": name,
        "arch": {"user": source},
        "data": data,
        "method": spec.parameterisation,
        "interpolant": "linear",
        "guidance": {"baked_scale": float(spec.guidance)},
        "user": spec.to_dict(),
    }


def _load_factory(name: str) -> tuple[object, object, Path]:
    module_name, fn_name = name.split(":")
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise UserModelError(f"model {name}: cannot import the factory ({e})") from None
    try:
        made = fn()
    except Exception as e:  # the user's code: any failure is the model's
        raise UserModelError(f"model {name}: the factory raised {type(e).__name__}: {e}") from None
    if not (isinstance(made, tuple) and len(made) == 2 and callable(made[0])):
        raise UserModelError(
            f"model {name}: the factory must return (module, spec), got {type(made).__name__}"
        )
    return made[0], made[1], Path(name)


def manifest_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _load_file(name: str) -> tuple[object, dict, Path]:
    path = Path(name)
    if not path.is_file():
        raise UserModelError(f"model {name}: no such file")
    manifest = manifest_path(path)
    try:
        spec = json.loads(manifest.read_text())
    except OSError:
        raise UserModelError(f"model {name}: no manifest {manifest} beside it (docs/models.md)") from None
    except json.JSONDecodeError as e:
        raise UserModelError(f"model {name}: manifest {manifest} is not valid JSON ({e})") from None
    if path.suffix == ".onnx":
        from flowmap.user.onnx import OnnxModule

        return OnnxModule(path, name), spec, path
    try:
        return torch.jit.load(str(path), map_location="cpu"), spec, path
    except Exception as e:  # torch raises RuntimeError and others for a file that is not TorchScript
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserModelError(f"model {name}: not a TorchScript file ({why})") from None
