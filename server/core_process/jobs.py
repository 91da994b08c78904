"""The scheduler's data types: a request (Job, its Steer), what one network call runs (Batch, with a
SteerRun per steered job), and the errors that end a request early (the API maps each to a status).

Plain dataclasses, no behaviour beyond derived counts: `server.core_process.scheduler` fills them in,
the executor (`server.core_process.engine_core`) reads Batch and writes its x0 / SteerRun results.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from torch import Tensor

from server.common.spec import rows_per_sample

_ids = itertools.count(1)


class SchedulingError(Exception):
    """A request the scheduler refused or ended early (the API maps each subclass to a status)."""


class QueueFull(SchedulingError):
    def __init__(self, retry_after: float):
        super().__init__(f"queue full; retry after {retry_after:.0f} s")
        self.retry_after = retry_after


class DeadlineExceeded(SchedulingError):
    pass


class Cancelled(SchedulingError):
    pass


@dataclass(eq=False)
class Steer:
    """A steered job's particles: each sample is a group of `particles` consecutive rows, resampled at
    every step boundary by the reward of their jump to data (flowmap.steering.sample_particles)."""

    particles: int
    reward: Callable[[Tensor], Tensor]  # x0 [M, *shape] -> [M]
    scale: float
    select: str = "sir"  # sir (multinomial resampling) or best (best-of-N)
    name: str = ""  # the reward's built-in name (metrics label)


@dataclass(eq=False)
class SteerRun:
    """One steered job's rows [start, stop) in a batch, all at step k (whole particle groups)."""

    job: Job
    start: int
    stop: int
    k: int
    keys: Tensor  # [groups] int64: each group's first row key (its resampling draws)
    prev: Tensor  # [rows] float64: the potential at the last resampling
    pot: Tensor | None = None  # set by the executor: the new potential, rows in resampled order
    error: Exception | None = None  # set by the executor when the reward failed (fails this job only)


@dataclass(eq=False)
class Job:
    """One request: n samples sharing steps, seed and guidance; per-sample labels and t=1 noise."""

    noise: Tensor  # [n, *shape], from flowmap.samplers.make_noise(n, shape, seed)
    labels: list[int]  # [n] labels for the engine (a class, or the null label)
    steps: int | None  # None: "auto", chosen at submission from the deadline
    guidance: float = 1.0
    deadline: float | None = None  # absolute time; None: no deadline
    on_done: Callable[[Job], None] | None = None
    seed: int | None = None  # for the response only (the noise is already drawn)
    keys: list[int] | None = None  # [n] re-noise keys (sample_keys): the consistency sampler; None: flow map
    steer: Steer | None = None  # particles: noise and keys hold n * particles rows; result n samples
    margin: float = 0.0  # seconds "auto" plans to finish before the deadline (the result's way back)
    on_preview: Callable[[Job, int, Tensor], None] | None = None  # (job, step 1..K, x0 [n, *shape])
    id: int = field(default_factory=lambda: next(_ids))
    # set by the scheduler
    auto: bool = False  # steps were "auto": until the job starts, admission may cut them (Scheduler.shorten)
    arrival: float = 0.0
    result: Tensor | None = None  # [n, *shape] once done
    admitted: int = 0
    remaining: int = 0
    first_admit: float | None = None
    exit_steps: int | None = None  # the fewest steps a row took when early exit finished it in one jump
    finished: float | None = None
    error: Exception | None = None
    done: bool = False
    chunks: list[Tensor] = field(default_factory=list, repr=False)
    previews: dict[int, list[Tensor]] = field(default_factory=dict, repr=False)  # step -> x0 chunks

    @cached_property
    def n(self) -> int:  # the noise's row count never changes
        return int(self.noise.shape[0])

    @property
    def rows_per_sample(self) -> int:
        return rows_per_sample(self.guidance)

    @property
    def group(self) -> int:
        """Rows admitted together: a steered sample's particles."""
        return self.steer.particles if self.steer is not None else 1

    @property
    def steps_taken(self) -> int | None:
        """The steps the result took: `steps`, or fewer when early exit cut a row short."""
        return self.exit_steps or self.steps

    @property
    def rows_in_flight(self) -> int:
        return self.admitted - (self.n - self.remaining)


@dataclass
class Batch:
    """What the next network call runs: every active row, one step each (x: [N, *shape]; s, t, y, w: [N]
    CPU tensors sharing memory with the scheduler's arrays)."""

    x: Tensor
    s: Tensor
    t: Tensor
    y: Tensor
    w: Tensor
    rows: int  # network rows (guided samples count twice)
    keys: Tensor | None = None  # [N] int64 re-noise keys, 0 on flow-map rows (sample_keys are never 0);
    # None: no row re-noises
    k: Tensor | None = None  # [N] int64 step index of each row (the re-noise draw's counter)
    steer: list[SteerRun] | None = None  # steered rows, per job and admission
    preview: Tensor | None = None  # [P] int64 rows whose job wants previews; None: no row does
    x0: Tensor | None = None  # [P, *shape] set by the executor: those rows' jump to data X_{s,0}

    @property
    def n(self) -> int:
        return int(self.x.shape[0])
