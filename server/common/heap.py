"""A serving process's heap once it is built: collected once, then frozen (`gc.freeze`).

Python's full collection walks every tracked object. Without a freeze, one fired under load walks the
whole startup heap and stalls every request in flight: 25-55 ms for an API process's ~60,000 objects
(FastAPI, pydantic, numpy) on the 2-vCPU dev box, 200+ ms for an engine core's ~10^6 (torch). Frozen
objects are never collected, which is right for what lives as long as the process; what requests create
afterwards is collected as usual. docs/server.md "A heap frozen at start" has the A/B.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Collect what start-up left behind, then put everything alive now out of the collector's reach."""
    gc.collect()
    gc.freeze()
