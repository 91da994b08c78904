"""Previews (SSE): a job with `on_preview` gets its samples' jump to data X_{s,0} at every step.

The executor computes x0 from the step's own u only for the rows that asked (Batch.preview); a job
admitted over several iterations makes step k in parts, so its parts are gathered here and handed over
together once all its samples made that step.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from server.core_process.rows import runs


def hand_over(s, idx: np.ndarray, x0: Tensor) -> None:
    """Hand each previewing job its samples' x0 of the step just made, once all n made it (a job
    admitted over several iterations makes step k in parts; its parts arrive in sample order)."""
    ids, ks = s.job[idx], s.k[idx]
    starts, counts = runs(ids, ks)
    for a, chunk in zip(starts, x0.split(counts), strict=True):
        job = s.jobs.get(int(ids[a]))
        if job is None or job.on_preview is None:  # ended early: its rows go at the next compaction
            continue
        step = int(ks[a]) + 1
        parts = job.previews.setdefault(step, [])
        parts.append(chunk[:: job.group])  # a steered group: its first particle
        if sum(len(p) for p in parts) == job.n // job.group:  # every sample (steered: every group)
            del job.previews[step]
            job.on_preview(job, step, parts[0] if len(parts) == 1 else torch.cat(parts))
