"""Named messages between the processes of a server, and their msgpack wire form (no torch here).

API process -> engine core (ZeroMQ DEALER -> ROUTER):  Generate, Cancel
engine core -> API process (ROUTER -> DEALER):         Done, Failed
engine core -> supervisor (PUSH -> PULL):               Ready, Fatal
supervisor -> API processes (PUB -> SUB):               CoreStates

Each message is a msgpack array [tag, field, ...] in the dataclass's field order; `decode` rejects
anything else with WireError. Times are absolute `time.monotonic()` values, which all processes on
one Linux host share (CLOCK_MONOTONIC).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import msgpack


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
    TAG = 1


@dataclass
class Cancel:
    id: int
    TAG = 2


@dataclass
class Done:
    """Samples as float32 bytes, C-order [n, *shape]."""

    id: int
    steps: int
    data: bytes
    queue_s: float
    compute_s: float
    sent: float = 0.0  # time.monotonic() when the core sent it (one clock for all processes)
    TAG = 3


@dataclass
class Failed:
    """kind: queue_full | deadline | cancelled | invalid | failed."""

    id: int
    kind: str
    message: str
    retry_after: float | None = None
    TAG = 4


@dataclass
class Ready:
    """A core loaded, warmed up and listening; `info` describes its model (ModelInfo fields)."""

    index: int
    pid: int
    info: dict
    TAG = 5


@dataclass
class Fatal:
    """A core cannot serve: the reason, and 2 when it is the user's input (bad model/engine), else 1."""

    index: int
    message: str
    code: int = 1
    TAG = 6


@dataclass
class CoreStates:
    """The supervisor's view of every core, sent on change and periodically (late subscribers catch up).

    cores[i] = {"up": bool, "generation": int (counts starts), "info": dict | None}; draining: the
    supervisor is shutting down."""

    cores: list[dict] = field(default_factory=list)
    draining: bool = False
    TAG = 7


MESSAGES = {m.TAG: m for m in (Generate, Cancel, Done, Failed, Ready, Fatal, CoreStates)}
_FIELDS = {m: tuple(f.name for f in dataclasses.fields(m)) for m in MESSAGES.values()}


def encode(msg) -> bytes:
    return msgpack.packb([msg.TAG, *(getattr(msg, f) for f in _FIELDS[type(msg)])], use_bin_type=True)


def decode(frame: bytes):
    try:
        tag, *values = msgpack.unpackb(frame, raw=False, strict_map_key=False)
        return MESSAGES[tag](*values)
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as e:
        raise WireError(f"not a flowmap message: {type(e).__name__}") from None
