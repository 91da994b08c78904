"""Early exit: re-plan at every step boundary, and finish a row whose deadline is at risk in one jump.

A flow map can jump from any time straight to data: X_{s,0}(x) = x - s u(x, s, 0, y). So a row at step
k of K (time s = G[K, k]) that could not wait for another boundary without missing its deadline takes
this iteration to t = 0 instead of G[K, k + 1], and leaves the batch done after k + 1 steps, rather than
missing the deadline and getting nothing (504). Its job reports the steps it actually took (the fewest
of its rows).

Prediction: each remaining step costs one iteration at the current batch's rows (the call timer's
estimate, the same one admission and "auto" steps use); the deadline is the job's less its margin (the
result's way back). Pure numpy on the rows in flight; the scheduler calls `plan` before each batch.
"""

from __future__ import annotations

import numpy as np


def at_risk(k: np.ndarray, K: np.ndarray, deadline: np.ndarray, now: float, step: float) -> np.ndarray:
    """[R] bool: rows that must jump to data in this iteration: more than one step left, and a jump at the
    next boundary (this step, then one more, `step` seconds each from `now`) would end past their
    `deadline` (absolute, less margins; inf: none). Later is better: every step kept is quality kept, and
    the next boundary re-plans with what the timer learned meanwhile. A row past hope (not even this one
    jump fits) jumps too: a late result may still beat the client's patience, a 504 never does."""
    return (K - k > 1) & (now + 2 * step > deadline)


def plan(s, now: float) -> None:
    """Mark the rows in flight of scheduler `s` that must finish in this iteration (s.cut), and note it on
    their jobs (s is not annotated: the scheduler imports this module)."""
    if not s.in_flight():
        return
    step = s.timer.predict(s.rows)
    # the earliest end (deadline less margin) this far away: no row is at risk. The margin counts ("auto"
    # rows have one): the raw deadline would let a row whose end is near through uncut (then a 504)
    if getattr(s, "next_end", np.inf) - now > 4 * step:
        return
    s.next_end = min((_end(j) for j in s.jobs.values()), default=np.inf)  # jobs done since leave it
    if s.next_end - now > 4 * step:
        return
    ids, inverse = np.unique(s.job, return_inverse=True)
    jobs = [s.jobs.get(j) for j in ids.tolist()]
    ends = np.array([_end(j) for j in jobs], np.float64)[inverse]  # [R]
    cut = at_risk(s.k, s.K, ends, now, step) & ~s.cut
    if not cut.any():
        return
    s.cut |= cut
    for jid, k in zip(s.job[cut].tolist(), s.k[cut].tolist(), strict=True):
        job = s.jobs.get(jid)
        if job is not None:
            job.exit_steps = min(job.exit_steps or job.steps, k + 1)


def note(s, job) -> None:
    """A job submitted to scheduler `s`: keep `s.next_end`, the earliest end of its jobs, a lower bound
    (jobs that finish leave it low until `plan` recomputes it)."""
    s.next_end = min(getattr(s, "next_end", np.inf), _end(job))


def _end(job) -> float:
    if job is None or job.deadline is None:
        return np.inf
    return job.deadline - job.margin
