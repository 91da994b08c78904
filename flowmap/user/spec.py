"""The spec of a user's model (docs/models.md): what its module computes, in which time convention.

Torch-free: a factory may return it, or a plain dict with the same fields; a manifest is its JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from flowmap.errors import UserError

# what the module returns, called as below with times in its own convention and y: [B] int64
PARAMETERISATIONS = {
    "average_velocity": "module(x, s, t, y) -> u with X_{s,t}(x) = x + (t - s) u (MeanFlow)",
    "flow_map": "module(x, s, t, y) -> X_{s,t}(x)",
    "consistency": "module(x, t, y) -> the data x0 that x at time t came from",
    "velocity": "module(x, t, y) -> dx/dt of the probability-flow ODE",
}
# time conventions: ours (t = 1 noise, t = 0 data); reversed (t = 0 noise, t = 1 data);
# sigma (EDM: x_sigma = x0 + sigma * eps, sigma from 0 (data) to sigma_max (noise))
TIMES = ("ours", "reversed", "sigma")
SOLVERS = ("euler", "heun")  # velocity models: one solver step per served step


class UserModelError(UserError, ValueError):
    """A user model that cannot be loaded or fails a load check; the message names the model."""


@dataclass(frozen=True)
class UserSpec:
    """A user's model, declared by its owner (every field is checked by `check`)."""

    shape: list[int]  # one sample, e.g. [3, 32, 32] or [2]
    parameterisation: str  # a key of PARAMETERISATIONS
    time: str = "ours"  # one of TIMES
    num_classes: int = 0  # 0: unconditional; else y in 0..C-1 and C is the null label (guidance)
    guidance: float = 1.0  # classifier-free guidance baked into the network (1: none)
    solver: str = "euler"  # velocity models only: euler or heun (2 network calls a step)
    sigma_max: float = 80.0  # sigma time only: the noise level served steps start from
    name: str | None = None  # the served name (default: the factory's or file's name)
    image: bool | None = None  # PNG output (default: shape [C, H, W] with C in 1, 3, 4)
    data: str = "user"  # the data set it models: gmm8, digits or mnist lets `flowmap eval` score it
    extra: dict = field(default_factory=dict)  # the owner's own notes, kept as is

    @classmethod
    def of(cls, value, where: str) -> UserSpec:
        """A UserSpec from itself or a dict of its fields; UserModelError naming `where` otherwise."""
        if isinstance(value, cls):
            return value.check(where)
        if not isinstance(value, dict):
            raise UserModelError(
                f"model {where}: spec must be a UserSpec or a dict, not {type(value).__name__}"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise UserModelError(f"model {where}: unknown spec field(s) {unknown}; known: {sorted(known)}")
        try:
            return cls(**value).check(where)
        except TypeError as e:
            raise UserModelError(f"model {where}: bad spec ({e})") from None

    def check(self, where: str) -> UserSpec:
        def bad(what: str) -> UserModelError:
            return UserModelError(f"model {where}: spec {what}")

        if not (isinstance(self.shape, list | tuple) and self.shape and all(_pos_int(d) for d in self.shape)):
            raise bad(f"shape must be a non-empty list of positive ints, got {self.shape!r}")
        if self.parameterisation not in PARAMETERISATIONS:
            raise bad(f"parameterisation {self.parameterisation!r} is not one of {list(PARAMETERISATIONS)}")
        if self.time not in TIMES:
            raise bad(f"time {self.time!r} is not one of {list(TIMES)}")
        if self.solver not in SOLVERS:
            raise bad(f"solver {self.solver!r} is not one of {list(SOLVERS)}")
        if not (_int(self.num_classes) and self.num_classes >= 0):
            raise bad(f"num_classes must be an int >= 0, got {self.num_classes!r}")
        if not (_num(self.guidance) and self.guidance > 0):
            raise bad(f"guidance must be a number > 0, got {self.guidance!r}")
        if not isinstance(self.data, str):
            raise bad(f"data must be a data set name, got {self.data!r}")
        if not (_num(self.sigma_max) and self.sigma_max > 0):
            raise bad(f"sigma_max must be a number > 0, got {self.sigma_max!r}")
        return self

    def to_dict(self) -> dict:
        return {**asdict(self), "shape": list(self.shape)}


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _pos_int(v) -> bool:
    return _int(v) and v > 0


def _num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)
