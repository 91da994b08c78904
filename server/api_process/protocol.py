"""The protocols side by side (v1 JSON, v2 Open Inference Protocol, OpenAI's images API): which one a path
speaks, the statuses each sends and documents, its error body, the server's version, the samplers a
request may name and the steps it gets when it names none."""

from __future__ import annotations

from flowmap import __version__ as VERSION
from server.common.spec import SAMPLERS

V1, V2, OPENAI = "v1", "v2", "openai"
OPENAI_PREFIX = "/v1/images/"
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
OPENAI_TYPES = {  # OpenAI's error "type" per status sent
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
    504: "timeout_error",
}

__all__ = [
    "OPENAI",
    "OPENAI_PREFIX",
    "OPENAI_TYPES",
    "SAMPLERS",
    "STATUSES",
    "V1",
    "V1_STATUSES",
    "V2",
    "VERSION",
    "error_body",
    "protocol",
    "status_for",
    "steps_for",
]


def protocol(path: str) -> str:
    if path.startswith(OPENAI_PREFIX):
        return OPENAI
    return V2 if path.startswith("/v2") else V1


def status_for(status: int, proto: str) -> int:
    """The status actually sent (and recorded in metrics as sent): v2 and OpenAI report invalid input as
    400."""
    return 400 if proto != V1 and status == 422 else status


def error_body(proto: str, status: int, message: str, param: str | None = None, code: str | None = None):
    """The error body of each protocol (status: as sent): v1 {"detail"}, v2 {"error"}, OpenAI
    {"error": {message, type, param, code}} (param: the request field at fault)."""
    if proto == V2:
        return {"error": message}
    if proto == OPENAI:
        kind = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        return {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return {"detail": message}


def steps_for(steps: int | str | None, default_steps: int) -> int | None:
    """A request's steps: the server's default when it gives none; None for "auto" (v1 only), which the
    engine core picks from the deadline."""
    if steps == "auto":
        return None
    return default_steps if steps is None else steps
