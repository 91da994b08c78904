"""The v1 and v2 protocols side by side: which one a path speaks, the statuses each sends and documents,
the server's version, the samplers a request may name and the steps it gets when it names none."""

from __future__ import annotations

from flowmap import __version__ as VERSION
from server.common.spec import SAMPLERS

V1, V2 = "v1", "v2"
STATUSES = {  # the error statuses both document; v2 sends 400 where v1 sends 422 (invalid input)
    400: "invalid request (the message names the input, output or parameter)",
    401: "missing or wrong API key",
    404: "unknown model",
    408: "request body not received in time",
    413: "body too large",
    429: "queue full (Retry-After)",
    503: "not ready, draining, or an engine core restarting",
    504: "deadline passed",
}
V1_STATUSES = {s: d for s, d in STATUSES.items() if s != 400}  # v1's 422 is FastAPI's own

__all__ = [
    "SAMPLERS",
    "STATUSES",
    "V1",
    "V1_STATUSES",
    "V2",
    "VERSION",
    "protocol",
    "status_for",
    "steps_for",
]


def protocol(path: str) -> str:
    return V2 if path.startswith("/v2") else V1


def status_for(status: int, proto: str) -> int:
    """The status actually sent (and recorded in metrics as sent): v2 reports invalid input as 400."""
    return 400 if proto == V2 and status == 422 else status


def steps_for(steps: int | str | None, default_steps: int) -> int | None:
    """A request's steps: the server's default when it gives none; None for "auto" (v1 only), which the
    engine core picks from the deadline."""
    if steps == "auto":
        return None
    return default_steps if steps is None else steps
