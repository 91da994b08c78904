"""The batch cap, re-decided from served iterations (start-up decides it from idle ones: build.warm_up).

Start-up times one iteration per bucket on an idle core and caps batches at the knee of those costs
(admission.batch_cap). Served, an iteration also pays for what surrounds the network call: scheduling,
retiring, sending outputs, the messages received before it. On digits that was ~17% of an iteration at
64 rows under 8x2 load (py-spy: 82.6% of the core's samples in ONNX Runtime), and 128 rows served 12-20%
more 8x2 requests than the 64 the idle knee chose (docs/loadtests.md). Part of that cost is paid once per
iteration, part once per request in it; which part dominates is measured, not assumed.

While the core is busy (iterations filling at least half the cap), `CapTuner` keeps, per bucket it
serves, moving averages of the iteration's period (start to start) and of its network call (the
executor), and from them
    slowdown = served call / idle call of its bucket   (the engine next to a busy neighbour: it scales
                                                         every size alike, so it moves no knee)
    rest     = period - call                           (everything else in the iteration)
Every `every` busy iterations it predicts each bucket's served iteration: measured where that bucket
was served; elsewhere slowdown x its idle call + the rest, the rest a line through the two nearest served
buckets (a constant while only one was served: the first move up is a guess that a fixed cost
dominates, which the bucket's own measurement then confirms or takes back). Then it re-decides the cap
with admission.batch_cap on those costs: up at the decision after the knee moves up, down only when a
stricter share (`hysteresis` above it) agrees, so a cap at a knife's edge does not flap.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.core_process.admission import batch_cap

MIN_SEEN = 20  # busy iterations of a bucket before its own measurement replaces the prediction


@dataclass
class Served:
    """Moving averages of one bucket's busy iterations."""

    period: float
    call: float
    seen: int = 1


class CapTuner:
    """The batch cap from idle call costs and served iterations (see the module)."""

    def __init__(
        self,
        idle: dict[int, float],
        share: float,
        cap: int,
        every: int = 500,
        alpha: float = 0.05,
        hysteresis: float = 0.05,
    ):
        if not idle or min(idle.values()) <= 0:
            raise ValueError(f"idle call costs must be positive seconds by rows, not {idle}")
        self.idle = dict(sorted(idle.items()))  # seconds of one network call on an idle core, by bucket
        self.share, self.cap, self.every = share, cap, every
        self.alpha, self.hysteresis = alpha, hysteresis
        self.served: dict[int, Served] = {}
        self.seen = 0

    def bucket(self, rows: int) -> int:
        """The bucket a call of `rows` rows is padded to."""
        return next((b for b in self.idle if b >= rows), max(self.idle))

    def observe(self, rows: int, call: float, period: float) -> int | None:
        """One iteration of `rows` rows whose network call took `call` seconds of its `period` (start to
        start). Returns the new cap when it changes, else None."""
        if rows * 2 < self.cap or not 0 < call <= period:  # not busy, or a clock that stepped
            return None
        b = self.bucket(rows)
        s = self.served.get(b)
        if s is None:
            self.served[b] = Served(period, call)
        else:
            s.period += self.alpha * (period - s.period)
            s.call += self.alpha * (call - s.call)
            s.seen += 1
        self.seen += 1
        return None if self.seen % self.every else self.decide()

    def served_costs(self) -> dict[int, float]:
        """Predicted seconds of one served iteration, by bucket (the idle call costs before any busy one)."""
        known = {b: s for b, s in self.served.items() if s.seen >= MIN_SEEN} or self.served
        if not known:
            return dict(self.idle)
        slowdown = sum(s.call / self.idle[b] for b, s in known.items()) / len(known)
        rest = {b: s.period - s.call for b, s in known.items()}
        return {
            b: known[b].period if b in known else slowdown * c + _line(rest, b) for b, c in self.idle.items()
        }

    def decide(self) -> int | None:
        """The cap the served costs call for, if it differs from the current one (which it replaces)."""
        costs = self.served_costs()
        up = batch_cap(costs, self.share)
        down = batch_cap(costs, min(1.0, self.share + self.hysteresis))  # >= up: a stricter knee
        new = up if up > self.cap else down if down < self.cap else self.cap
        if new == self.cap:
            return None
        self.cap = new
        return new


def _line(points: dict[int, float], x: int) -> float:
    """The value at x of the line through the two measured points nearest x (a constant with one point),
    never below 0."""
    near = sorted(points, key=lambda b: (abs(b - x), b))[:2]
    if len(near) == 1:
        return max(0.0, points[near[0]])
    (x0, x1) = sorted(near)
    y0, y1 = points[x0], points[x1]
    return max(0.0, y0 + (y1 - y0) * (x - x0) / (x1 - x0))
