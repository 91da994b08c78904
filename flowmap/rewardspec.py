"""The built-in reward specs and their rules, without torch: `flowmap.reward.make_reward` builds what they
name, and the server's API processes check a client's "steer" option with the same rules before any
engine core sees it (server/common/steer.py).

Built-ins: `class:C` (C in 0..9, digits [1, 8, 8] or mnist [1, 28, 28] images), `ink` (no argument,
images [C, H, W]), `mode:K` (K in 0..7, gmm8 points [2]). Arguments are ASCII digits only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from flowmap.errors import UserError

BUILTINS = ("class", "ink", "mode")
GMM8_SHAPE = [2]
CLASSIFIED = {"digits": [1, 8, 8], "mnist": [1, 28, 28]}  # data sets with a shipped classifier, by shape
DIGIT_CLASSES, GMM8_MODES = 10, 8  # flowmap.data: the digits classes, GMM8_K
_INT = re.compile(r"[0-9]{1,4}")


class RewardError(UserError, ValueError):
    """A reward spec that names no reward, a bad argument, or a reward that does not fit the model."""


@dataclass(frozen=True)
class Builtin:
    """A checked built-in reward spec: its name, integer argument (None for ink) and, for class, the data
    set whose classifier judges it."""

    name: str
    arg: int | None = None
    data: str | None = None


def builtin_name(spec: str) -> str | None:
    """'class', 'ink' or 'mode' for a built-in reward spec, else None."""
    name = spec.partition(":")[0]
    return name if name in BUILTINS else None


def shown(spec: str) -> str:
    """A spec in a message: its repr, cut to 64 characters (a client may send 256)."""
    return repr(spec if len(spec) <= 64 else spec[:64] + "...")


def _int_arg(spec: str, arg: str, count: int) -> int:
    if not _INT.fullmatch(arg):
        raise RewardError(f"reward {shown(spec)}: {arg[:16]!r} is not an integer")
    if int(arg) >= count:
        raise RewardError(f"reward {shown(spec)}: {int(arg)} out of range 0..{count - 1}")
    return int(arg)


def _check_shape(spec: str, shape: list[int] | None, want: list[int], what: str) -> None:
    if shape is not None and list(shape) != want:
        raise RewardError(f"reward {shown(spec)} needs {what} {want}; the model makes {list(shape)}")


def parse_builtin(spec: str, shape: list[int] | None = None) -> Builtin | None:
    """The built-in reward `spec` names, checked against the model's sample shape when one is given;
    None when it names no built-in. RewardError for a bad argument or a shape the reward does not fit."""
    name, sep, arg = spec.partition(":")
    if name == "class":
        data = next((d for d, s in CLASSIFIED.items() if shape is None or list(shape) == s), None)
        if data is None:
            raise RewardError(
                f"reward {shown(spec)} needs digits images [1, 8, 8] or mnist images [1, 28, 28] (a digits "
                f"model or an mnist model: they have a shipped classifier); the model makes {list(shape)}"
            )
        return Builtin(name, _int_arg(spec, arg, DIGIT_CLASSES), data)
    if name == "mode":
        _check_shape(spec, shape, GMM8_SHAPE, "gmm8 points")
        return Builtin(name, _int_arg(spec, arg, GMM8_MODES))
    if name == "ink":
        if sep or (shape is not None and len(shape) != 3):
            shape_text = "" if shape is None else f"; the model makes {list(shape)}"
            raise RewardError(
                f"reward {shown(spec)}: 'ink' takes no argument and needs images [C, H, W]{shape_text}"
            )
        return Builtin(name)
    return None
