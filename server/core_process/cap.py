"""The batch cap, re-decided from served iterations (start-up decides it from idle calls: build.warm_up).

Start-up times one network call per bucket on an idle core and caps batches at the knee of those costs
(admission.batch_cap). Served, an iteration also pays for what surrounds the call: scheduling, retiring,
sending outputs, the messages received before it. On digits that is ~17% of an iteration at 64 rows
(py-spy under 8x2 load: 82.6% of the core's samples in ONNX Runtime), paid once per iteration whatever
its rows, so a larger batch pays off more than the idle costs said: the knee there chose 64 rows, and 128
served 12-20% more 8x2 requests (docs/loadtests.md). On mnist the call is 23 ms at 8 rows and the
surroundings change nothing.

So, while the core is busy (iterations that fill at least half the cap), `CapTuner` learns
    call  = slowdown * idle cost of the call's bucket   (the engine under load: another process shares the
                                                          CPU, caches are colder)
    overhead = period (start to start) - call             (the rest of the iteration)
as moving averages, and every `every` such iterations re-decides the cap with admission.batch_cap on the
predicted served costs slowdown * idle[b] + overhead. It raises the cap as soon as the knee moves up, and
lowers it only when the knee is lower by a clear margin (`hysteresis` of share), so a cap at a knife's
edge does not flap.
"""

from __future__ import annotations

from server.core_process.admission import batch_cap


class CapTuner:
    """The batch cap from idle call costs plus what serving adds to every iteration (see the module)."""

    def __init__(
        self,
        costs: dict[int, float],
        share: float,
        cap: int,
        every: int = 200,
        alpha: float = 0.02,
        hysteresis: float = 0.03,
    ):
        if not costs or min(costs.values()) <= 0:
            raise ValueError(f"idle costs must be positive seconds by rows, not {costs}")
        self.costs = dict(sorted(costs.items()))  # idle seconds of one call, by bucket rows
        self.share, self.cap, self.every = share, cap, every
        self.alpha, self.hysteresis = alpha, hysteresis
        self.slowdown: float | None = None  # served call time / idle call time of its bucket
        self.overhead: float | None = None  # seconds of an iteration outside the network call
        self.seen = 0

    def bucket(self, rows: int) -> int:
        return next((b for b in self.costs if b >= rows), max(self.costs))

    def observe(self, rows: int, call: float, period: float) -> int | None:
        """One iteration of `rows` rows whose network call took `call` seconds of its `period` (start to
        start). Returns the new cap when it changes, else None."""
        if rows * 2 < self.cap or not 0 < call <= period:  # not busy, or a clock that stepped
            return None
        slow, over = call / self.costs[self.bucket(rows)], period - call
        if self.slowdown is None:
            self.slowdown, self.overhead = slow, over
        else:
            self.slowdown += self.alpha * (slow - self.slowdown)
            self.overhead += self.alpha * (over - self.overhead)
        self.seen += 1
        if self.seen % self.every:
            return None
        return self.decide()

    def served_costs(self) -> dict[int, float]:
        """Predicted seconds of one served iteration, by bucket rows."""
        k, o = self.slowdown or 1.0, self.overhead or 0.0
        return {b: k * c + o for b, c in self.costs.items()}

    def decide(self) -> int | None:
        costs = self.served_costs()
        up = batch_cap(costs, self.share)
        down = batch_cap(costs, min(1.0, self.share + self.hysteresis))
        new = up if up > self.cap else down if down < self.cap else self.cap
        if new == self.cap:
            return None
        self.cap = new
        return new
