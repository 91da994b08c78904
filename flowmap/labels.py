"""The classes of samples when none is asked (no torch: the server's API processes use it too)."""

from __future__ import annotations


def cycled(n: int, num_classes: int) -> list[int]:
    """Class of each of `n` samples: 0, 1, ..., C-1, 0, 1, ... (`flowmap sample`, the server, the peers)."""
    return [i % num_classes for i in range(n)]
