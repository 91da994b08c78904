"""The "steer" request option, checked without torch (the API processes) and again in the engine core.

A steered request asks for `num_samples` samples, each the survivor of `particles` particles that run as
rows of the step-level batch: at each step boundary the core scores every row's jump to data with the
reward and resamples within each sample's particles ("sir": multinomial, "best": best-of-N), as
flowmap.steering.sample_particles does with the flow-map look-ahead (docs/steering.md).

Rewards: the built-ins of flowmap.reward (class:C, ink, mode:K), checked here with flowmap.rewardspec's
rules (torch-free, the same the library builds with) so a bad request is refused before it reaches a
core; user rewards (package.module:function) only when the operator lists that exact spec in the settings
(steer_user_rewards): a client never makes the server import anything else. Gradient guidance ("guide")
is not served: it needs autograd through the network, which compiled engines do not give, and it does not
fit the shared batch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from flowmap.rewardspec import RewardError, builtin_name, parse_builtin, shown
from server.common.spec import rows_per_sample

METHODS = ("sir", "best")


class SteerError(ValueError):
    """A steer option that cannot be served; `field` names it (steer.reward, steer.particles, ...)."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


@dataclass
class SteerParams:
    reward: str
    scale: float = 1.0
    particles: int = 8
    method: str = "sir"

    def wire(self) -> dict:
        return asdict(self)


def reward_label(spec: str) -> str:
    """The metrics label: the built-in's name, else the (operator-listed) spec itself."""
    return builtin_name(spec) or spec


def check_reward(spec: str, shape: list[int], user_rewards: list[str]) -> None:
    """A reward this server may compute for a model of sample shape `shape`: a built-in that fits it
    (flowmap.rewardspec's rules, the ones the core builds with), or a user reward the operator listed."""
    try:
        if parse_builtin(spec, list(shape)) is not None:
            return
    except RewardError as e:
        raise SteerError(str(e), "steer.reward") from None
    if spec not in user_rewards:
        allowed = ", ".join(["class:C", "ink", "mode:K", *user_rewards])
        raise SteerError(f"unknown reward {shown(spec)}: this server allows {allowed}", "steer.reward")


def check(sp: SteerParams, n: int, shape: list[int], samplers: list[str], settings) -> None:
    """Raises SteerError naming the field for anything this server would not run."""
    if sp.method == "guide":
        raise SteerError(
            "method 'guide' (gradient guidance) is not served: it needs autograd through the network; "
            "use 'sir' or 'best', or `flowmap sample --steer-method guide`",
            "steer.method",
        )
    if sp.method not in METHODS:
        raise SteerError(f"method must be one of {', '.join(METHODS)}", "steer.method")
    if not (type(sp.reward) is str and 1 <= len(sp.reward) <= 256):
        raise SteerError("reward must be a string of 1..256 characters", "steer.reward")
    check_reward(sp.reward, shape, settings.steer_user_rewards)
    if not (
        type(sp.scale) in (int, float)
        and math.isfinite(sp.scale)
        and 0 <= sp.scale <= settings.max_steer_scale
    ):
        raise SteerError(f"scale must be a finite number in 0..{settings.max_steer_scale:g}", "steer.scale")
    p_max = settings.max_particles
    if not (type(sp.particles) is int and 1 <= sp.particles <= p_max):
        msg = (
            f"particles must be an integer in 1..{p_max}"
            if p_max
            else "steering is disabled (max_particles 0)"
        )
        raise SteerError(msg, "steer.particles")
    if n * sp.particles > settings.max_steer_rows:
        msg = (
            f"num_samples x particles = {n * sp.particles} rows; this server allows {settings.max_steer_rows}"
        )
        raise SteerError(msg, "steer.particles")
    if "consistency" not in samplers:
        raise SteerError(
            "this model has no look-ahead sampler (jump to data and re-noise need the linear interpolant)",
            "steer",
        )


def from_wire(d) -> SteerParams:
    """A Generate message's steer dict (or a v2 request parameter) -> SteerParams; SteerError if malformed."""
    if (
        not isinstance(d, dict)
        or not set(d) <= {"reward", "scale", "particles", "method"}
        or "reward" not in d
    ):
        raise SteerError("steer must be an object with reward and optional scale, particles, method", "steer")
    sp = SteerParams(**d)
    if type(sp.scale) is int:
        sp.scale = float(sp.scale)
    return sp


def calls_per_sample(steps: int, particles: int, guidance: float) -> int:
    """Network rows evaluated per returned sample: every particle, every step (a guided row twice)."""
    return steps * particles * rows_per_sample(guidance)
