"""The work arriving at one engine core, refused or not, as decayed rates: what "auto" steps can afford.

Choosing each "auto" request's steps by its own deadline alone is greedy: under overload every request
still fits its deadline at the most steps (the queue bound keeps waits short), so the core fills with
4-step work and refuses the rest, where fewer steps each would have served them all. So "auto" also
takes no more steps than the arrivals can afford: with F the row-steps per second that fixed-step
requests bring, A the rows per second of "auto" requests, and C the row-steps per second the engine
makes at full batches (the call timer), the affordable steps are x = (UTILIZATION * C - F) / A, dithered
between floor(x) and floor(x) + 1 so that their mean is x. Below the knee x is above max_steps and
nothing changes; past it "auto" trades steps (quality) for goodput, as it was meant to.

Arrivals the API processes shed before sending them never reach the core, so under a sudden flood
the rates lag; that is self-correcting: fewer steps drain the queue, the shedding stops, and every
arrival is counted again.
"""

from __future__ import annotations

import math

UTILIZATION = 0.85  # of the engine's full-batch rate: headroom for Poisson bursts within the deadlines
TAU = 1.0  # seconds: the rates' memory (the time "auto" takes to follow a change of load)


class Demand:
    """Exponentially decayed arrival rates: row-steps per second of fixed-step requests, rows per second
    of "auto" ones (their steps are what is being chosen)."""

    def __init__(self, tau: float = TAU):
        self.tau = tau
        self.fixed = self.auto = 0.0  # decayed sums; rate = sum / tau
        self.at: float | None = None
        self.credit = 0.0  # the fractional steps owed, for dithering

    def _decay(self, now: float) -> None:
        if self.at is not None and now > self.at:
            f = math.exp(-(now - self.at) / self.tau)
            self.fixed, self.auto = self.fixed * f, self.auto * f
        self.at = now if self.at is None else max(self.at, now)

    def arrive(self, now: float, rows: int, steps: int | None) -> None:
        """A request of `rows` network rows and `steps` steps (None: "auto") asked to be admitted."""
        self._decay(now)
        if steps is None:
            self.auto += rows
        else:
            self.fixed += rows * steps

    def rates(self, now: float) -> tuple[float, float]:
        """(fixed row-steps per second, auto rows per second) at `now`."""
        self._decay(now)
        return self.fixed / self.tau, self.auto / self.tau

    def affordable(self, now: float, capacity: float, most: int, pressure: float = 0.0) -> int:
        """The steps an "auto" request may take at this load (1..most): `capacity` is the engine's
        row-steps per second at full batches; `pressure` the queue's predicted wait as a share of the
        server's bound on it. The rates say what the load affords on average; a burst fills the queue
        faster than they follow, and the bound would refuse the requests behind it, so the steps shrink
        in proportion as the queue nears the bound (none left at it: one step)."""
        fixed, auto = self.rates(now)
        if auto <= 0:
            return most
        x = (UTILIZATION * capacity - fixed) / auto * max(0.0, 1.0 - pressure)
        if x >= most:
            return most
        k = max(1, math.floor(x))
        self.credit += max(0.0, x - k)
        if self.credit >= 1.0 and k < most:
            self.credit -= 1.0
            k += 1
        return k
