"""The description of a served model, built once by its engine core and carried in the Ready message."""

from __future__ import annotations

IMAGE_CHANNELS = (1, 3, 4)  # PNG colour types: grey, RGB, RGBA


def is_image(shape: list[int]) -> bool:
    """PNG output is possible for [C, H, W] models with C in 1, 3, 4."""
    return len(shape) == 3 and shape[0] in IMAGE_CHANNELS
