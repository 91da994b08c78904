"""A serving process's heap once it is built: collected once, then frozen (`gc.freeze`).

Python's full collection walks every tracked object. Without a freeze, one fired under load walks the
whole startup heap and stalls every request in flight: 25-55 ms for an API process's ~60,000 objects
(FastAPI, pydantic, numpy) on the 2-vCPU dev box, 200+ ms for an engine core's ~10^6 (torch). Frozen
objects are never collected, which is right for what lives as long as the process; what requests create
afterwards is collected as usual. docs/server.md "A heap frozen at start" has the A/B.
"""

from __future__ import annotations

import ctypes
import gc


def freeze_startup_heap() -> None:
    """Collect what start-up left behind, give the C heap's free pages back, then put everything alive now
    out of the collector's reach."""
    gc.collect()
    trim_c_heap()
    gc.freeze()


def trim_c_heap() -> bool:
    """glibc's malloc_trim(0): return the free pages of the C heap to the system. An engine core's warm-up
    (the parity check against eager and the timed calls at every batch bucket, up to 128 rows) frees
    ~120 MB for mnist that glibc would otherwise keep mapped for good. False where the C library has no
    malloc_trim (musl, macOS): nothing to do there."""
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except Exception:  # OSError, AttributeError; TypeError where CDLL(None) is not allowed (Windows)
        return False
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    fn(0)
    return True
