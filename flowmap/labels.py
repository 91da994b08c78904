"""The classes of samples when none is asked, and the names of a model's classes (no torch: the server's
API processes use it too)."""

from __future__ import annotations

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_DATA = ("digits", "mnist")  # the built-in data whose classes are the digits 0-9


def cycled(n: int, num_classes: int) -> list[int]:
    """Class of each of `n` samples: 0, 1, ..., C-1, 0, 1, ... (`flowmap sample`, the server, the peers)."""
    return [i % num_classes for i in range(n)]


def class_names(data: dict) -> list[str]:
    """The names of a checkpoint's classes from its data config: its own `class_names` (one string per
    class), the digit words for the built-in digit data, else none (classes are known by index only)."""
    c, names = int(data.get("num_classes", 0)), data.get("class_names")
    if isinstance(names, list) and len(names) == c and all(isinstance(v, str) for v in names):
        return list(names)
    return list(DIGIT_NAMES) if data.get("name") in DIGIT_DATA and c == len(DIGIT_NAMES) else []
