"""Named messages between the processes of a server, and their msgpack wire form (no torch here).

API process -> engine core (ZeroMQ DEALER -> ROUTER):  Generate, Cancel, Shed
engine core -> API process (ROUTER -> DEALER):         Preview (streamed requests, one per step), Done, Failed
engine core -> supervisor (PUSH -> PULL):               Ready, Fatal
supervisor -> API processes (PUB -> SUB):               CoreStates

Each message is a msgpack array [tag, field, ...] in the dataclass's field order (a dataclass field as a
map of its fields); `decode` rejects anything else with WireError. Times are absolute `time.monotonic()`
values, which all processes on one Linux host share (CLOCK_MONOTONIC).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import msgpack

from server.common.spec import ModelSpec


class WireError(ValueError):
    """A frame that is not one of the messages below."""


@dataclass
class Generate:
    """Run one request: `n` samples from seed `seed` (noise drawn in the core, as `flowmap sample`)."""

    id: int
    n: int
    seed: int
    steps: int  # 0: "auto" (the core picks from the deadline)
    labels: list[int] | None  # [n] classes, or None (unconditional)
    guidance: float
    deadline: float  # absolute monotonic time
    sampler: str = "flowmap"  # or "consistency": jump to data, re-noise per sample from (seed, i)
    steer: dict | None = None  # server.common.steer.SteerParams as a dict: n samples of `particles` rows each
    margin: float = 0.0  # seconds "auto" reserves before the deadline for the result's way back
    preview: bool = False  # send a Preview after every step (a streamed request)
    TAG = 1


@dataclass
class Cancel:
    id: int
    sent: float = 0.0  # the API process's time.monotonic() when it cancelled (0: not known)
    TAG = 2


@dataclass
class Shed:
    """A request the API process refused itself (the core's reported queue was past the bound): still an
    arrival, which the core counts in the demand "auto" steps are chosen by (core_process.demand)."""

    rows: int  # network rows
    steps: int  # 0: "auto"
    TAG = 9


@dataclass
class Done:
    """Samples as float32 bytes, C-order [n, *shape]."""

    id: int
    steps: int
    data: bytes
    queue_s: float
    compute_s: float
    sent: float = 0.0  # time.monotonic() when the core sent it (one clock for all processes)
    wait_s: float = 0.0  # the least queue wait the core could give a new request when it sent this
    TAG = 3


@dataclass
class Failed:
    """kind: queue_full | deadline | cancelled | invalid | failed."""

    id: int
    kind: str
    message: str
    retry_after: float | None = None
    wait_s: float = 0.0  # as Done.wait_s
    sent: float = 0.0  # as Done.sent
    TAG = 4


@dataclass
class Preview:
    """A streamed request's jump to data after step `step` of `steps`: float32 bytes, C-order [n, *shape]."""

    id: int
    step: int
    steps: int
    data: bytes
    TAG = 8


@dataclass
class Ready:
    """A core loaded, warmed up and listening; `info` describes its model."""

    index: int
    pid: int
    info: ModelSpec
    TAG = 5

    def __post_init__(self):
        self.info = ModelSpec.of(self.info)


@dataclass
class Fatal:
    """A core cannot serve: the reason, and 2 when it is the user's input (bad model/engine), else 1."""

    index: int
    message: str
    code: int = 1
    TAG = 6


@dataclass
class CoreState:
    """One core as the supervisor sees it: up (Ready from its current process), generation (counts its
    starts), info (its model, once it was ever ready), failed (why its model could not be loaded at
    start: it is not served, the other models are)."""

    up: bool = False
    generation: int = 0
    info: ModelSpec | None = None
    failed: str = ""

    def __post_init__(self):
        self.info = ModelSpec.of(self.info)


@dataclass
class CoreStates:
    """The supervisor's view of every core, sent on change and periodically (late subscribers catch up);
    draining: the supervisor is shutting down."""

    cores: list[CoreState] = field(default_factory=list)
    draining: bool = False
    TAG = 7

    def __post_init__(self):
        self.cores = [c if isinstance(c, CoreState) else CoreState(**c) for c in self.cores]


MESSAGES = {m.TAG: m for m in (Generate, Cancel, Shed, Done, Failed, Ready, Fatal, CoreStates, Preview)}
_FIELDS = {m: tuple(f.name for f in dataclasses.fields(m)) for m in MESSAGES.values()}


def _plain(value):
    """msgpack's hook for what it cannot pack itself: a dataclass (ModelSpec, CoreState) as a map."""
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot send a {type(value).__name__}")


def encode(msg) -> bytes:
    fields = (getattr(msg, f) for f in _FIELDS[type(msg)])
    return msgpack.packb([msg.TAG, *fields], use_bin_type=True, default=_plain)


def decode(frame: bytes):
    try:
        tag, *values = msgpack.unpackb(frame, raw=False, strict_map_key=False)
        return MESSAGES[tag](*values)
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as e:
        raise WireError(f"not a flowmap message: {type(e).__name__}") from None
