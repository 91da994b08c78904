"""Plain stats records from the scheduler and the API; only server.common.metrics turns them into
Prometheus."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class IterationStats:
    """One network call of one model's worker (samples == 0: no call, only rows dropped). Made at every
    step boundary, so not frozen (a frozen dataclass's __init__ costs 5x as much); nothing changes it."""

    model: str
    rows: int  # network evaluations in this call (guided samples count twice)
    samples: int  # samples advanced one step
    seconds: float  # engine call + step
    queue_depth: int  # requests waiting after admission
    in_flight: int  # samples active after the update
    ok: bool = True
    queue_seconds: float = 0.0  # predicted wait of a request arriving now (the work queued ahead of it)
    dropped: int = 0  # rows of requests ended early (cancelled, expired) dropped before this call
    freed: list[float] | tuple = ()  # seconds from each cancel to its rows' drop, before this call


@dataclass(frozen=True)
class RequestStats:
    """One finished /v1/generate or v2 infer request."""

    model: str
    steps: int | None
    status: int  # HTTP status code sent
    seconds: float  # total latency
    queue_seconds: float | None = None
    num_samples: int = 0


@dataclass(frozen=True)
class Rejection:
    """A request turned away before or instead of being computed."""

    reason: str  # queue_full, draining, not_ready, deadline, cancelled, unauthorized,
    # invalid, too_large, not_found, failed
    model: str = ""


@dataclass(frozen=True)
class SteerStats:
    """One steered request answered: its network rows (all particles, all steps)."""

    model: str
    reward: str  # a built-in reward's name, or an operator-listed user reward spec
    evaluations: int
