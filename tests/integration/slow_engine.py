"""A test engine: eager plus a fixed sleep per call, so queues build up on purpose (FLOWMAP_TEST_DELAY_MS)."""

from __future__ import annotations

import os
import time

from engines.eager import EagerEngine


class SlowEngine(EagerEngine):
    name = "slow"

    def __call__(self, x, s, t, y):
        time.sleep(float(os.environ.get("FLOWMAP_TEST_DELAY_MS", "50")) / 1000)
        return super().__call__(x, s, t, y)


class BrokenWarmupEngine(EagerEngine):
    """Loads, then fails its warm-up, as a device that is lost or out of memory would."""

    name = "broken-warmup"

    def warmup(self):
        raise RuntimeError("device lost during warm-up (test engine)")
