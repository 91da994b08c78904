"""Losses: one small callable class per method. `loss(net, x0, y) -> per-sample loss [B]`.

Conventions (DESIGN.md): x_s = alpha_s x0 + sigma_s eps, t = 1 noise, t = 0 data;
X_{s,t}(x) = x + (t - s) u(x, s, t, y). The training loop reduces and steps the optimiser.

A loss that needs more than the student declares it in the class attribute `uses`, and the loop
passes those as keywords: "ema" (the EMA network, for targets) and "teacher" (a frozen flow map
whose diagonal u(x, t, t, y) is the teacher velocity; `--teacher CKPT`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from flowmap.guidance import cfg_mix
from flowmap.interpolants import Linear, expand, interpolate
from flowmap.teacher import ab2_solve_rows, heun_solve, heun_solve_rows, teacher_velocity
from flowmap.timesamplers import TimeSampler


def sqnorm(d: Tensor) -> Tensor:
    """Per-sample mean squared value of d: [B, ...] -> [B]."""
    return d.reshape(d.shape[0], -1).pow(2).mean(1)


def adaptive(err: Tensor, p: float, c: float = 1e-3) -> Tensor:
    """Adaptive loss weighting sg(1 / (err + c)^p) * err (MeanFlow Sec. 4.3)."""
    return err / (err.detach() + c) ** p if p > 0 else err


def drop_labels(y: Tensor | None, p: float, null: int) -> Tensor | None:
    """Replace a fraction p of labels by the null label (classifier-free guidance training)."""
    if y is None or p <= 0:
        return y
    return torch.where(torch.rand(y.shape, device=y.device) < p, torch.full_like(y, null), y)


def eulerian_target(net, x_s: Tensor, s: Tensor, t: Tensor, v: Tensor, y: Tensor | None):
    """(u(x_s, s, t), sg(v - (s - t) du/ds)), du/ds the total derivative along dx/ds = v (a JVP).

    From d/ds X_{s,t}(x_s) = 0 with X = x + (t - s) u: u = v + (t - s) du/ds. On the diagonal the
    target is v itself.
    """
    low = autocast_dtype(x_s)
    if low is not None:  # forward-mode AD does not go through autocast: the JVP on a low-precision copy
        with torch.autocast(x_s.device.type, enabled=False), torch.no_grad():
            du_ds = low_precision_jvp(net, x_s, s, t, v, y, low)
        return net(x_s, s, t, y), (v - expand(s - t, v) * du_ds.to(v.dtype)).detach()
    u, du_ds = torch.func.jvp(
        lambda x, a, b: net(x, a, b, y), (x_s, s, t), (v, torch.ones_like(s), torch.zeros_like(t))
    )
    return u, (v - expand(s - t, v) * du_ds).detach()


def autocast_dtype(x: Tensor):
    """The autocast dtype in force for x's device (bf16 training: `--precision bf16`), else None."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None


def low_precision_jvp(net, x_s: Tensor, s: Tensor, t: Tensor, v: Tensor, y: Tensor | None, dtype) -> Tensor:
    """d/ds u(x_s, s, t) along dx/ds = v, with every weight and x in `dtype` (times stay float32)."""
    params = {k: p.detach().to(dtype) for k, p in net.named_parameters()}
    params |= {k: b.to(dtype) if b.is_floating_point() else b for k, b in net.named_buffers()}
    fn = lambda x, a, b: torch.func.functional_call(net, params, (x, a, b, y))
    ones, zeros = torch.ones_like(s), torch.zeros_like(t)
    return torch.func.jvp(fn, (x_s.to(dtype), s, t), (v.to(dtype), ones, zeros))[1]


def eulerian_error(net, x_s: Tensor, s: Tensor, t: Tensor, v: Tensor, y: Tensor | None) -> Tensor:
    """||u(x_s, s, t) - sg(v - (s - t) du/ds)||^2 (MeanFlow's loss before adaptive weighting)."""
    u, target = eulerian_target(net, x_s, s, t, v, y)
    return sqnorm(u - target)


def lagrangian_target(net, x_s: Tensor, s: Tensor, t: Tensor, y: Tensor | None, b):
    """(d/dt X_{s,t}(x_s) by a forward-mode JVP, sg(b(X_{s,t}(x_s), t)))."""

    def flow(tau: Tensor) -> Tensor:
        return x_s + expand(tau - s, x_s) * net(x_s, s, tau, y)

    with torch.autocast(x_s.device.type, enabled=False):  # its gradient goes through the JVP: float32
        x_t, dx_dt = torch.func.jvp(flow, (t,), (torch.ones_like(t),))
    with torch.no_grad():
        target = b(x_t.detach(), t)
    return dx_dt, target


def lagrangian_error(net, x_s: Tensor, s: Tensor, t: Tensor, y: Tensor | None, b) -> Tensor:
    """||d/dt X_{s,t}(x_s) - sg(b(X_{s,t}(x_s), t))||^2."""
    dx_dt, target = lagrangian_target(net, x_s, s, t, y, b)
    return sqnorm(dx_dt - target)


@dataclass
class FlowMatching:
    """fm: conditional flow matching on the diagonal, ||u(x_t, t, t) - v_t||^2 (Lipman et al. 2023)."""

    interpolant: object = field(default_factory=Linear)
    time: TimeSampler = field(default_factory=lambda: TimeSampler(diagonal=1.0))
    label_dropout: float = 0.1

    def __call__(self, net, x0: Tensor, y: Tensor | None = None) -> Tensor:
        s, _ = self.time(x0.shape[0], x0.device)
        x_s, v = interpolate(self.interpolant, x0, torch.randn_like(x0), s)
        y = drop_labels(y, self.label_dropout, getattr(net, "num_classes", 0))
        return sqnorm(net(x_s, s, s, y) - v)


@dataclass
class Eulerian:
    """esd (MeanFlow, Geng et al. 2025, Eq. 10 in our orientation):
    u_tgt = v - (s - t) * d/ds u(x_s, s, t), the total derivative along dx/ds = v by a JVP.

    With `guidance` w > 1 the guided target of MeanFlow Eq. 13 is learnt (v~ = w v + (1 - w) u_null),
    so guided samples cost one call per step.
    """

    interpolant: object = field(default_factory=Linear)
    time: TimeSampler = field(default_factory=TimeSampler)
    adaptive_p: float = 1.0
    label_dropout: float = 0.1
    guidance: float = 1.0

    def velocity(self, net, x_s: Tensor, s: Tensor, v: Tensor, y: Tensor | None) -> Tensor:
        null = getattr(net, "num_classes", 0)
        if self.guidance == 1.0 or y is None or null == 0:
            return v
        with torch.no_grad():
            u_null = net(x_s, s, s, torch.full_like(y, null))
        keep = expand(y != null, v)  # dropped labels keep the unguided target
        return torch.where(keep, cfg_mix(v, u_null, self.guidance), v)  # v~ = u_null + w (v - u_null)

    def __call__(self, net, x0: Tensor, y: Tensor | None = None) -> Tensor:
        s, t = self.time(x0.shape[0], x0.device)
        x_s, v = interpolate(self.interpolant, x0, torch.randn_like(x0), s)
        y = drop_labels(y, self.label_dropout, getattr(net, "num_classes", 0))
        v = self.velocity(net, x_s, s, v, y)
        return adaptive(eulerian_error(net, x_s, s, t, v, y), self.adaptive_p)


@dataclass
class EulerianTerminal(Eulerian):
    """esdt: esd (MeanFlow) plus a terminal self-consistency term for long jumps, in u units:
    ||u(x_s, s, 0) - (x_s - sg(X^k_{s,0}(x_s))) / s||^2, X^k the model's own k-jump composite from s to 0
    (shortcut models' self-consistency, Frans et al. 2024, aimed at X_{s,0} as consistency models are).

    A fraction `long_fraction` of the terminal pairs start at s = 1 (the 1-step sampler's jump), the rest
    at s ~ U(s_min, 1). Targets from the EMA net (default: measured better on digits, where the student's
    own targets cost 2-4 step quality) or sg(student) as in iCT.
    """

    terminal_weight: float = 1.0
    substeps: int = 4
    long_fraction: float = 0.5
    s_min: float = 0.05
    ema_targets: bool = True
    uses: ClassVar[tuple[str, ...]] = ("ema",)

    def __call__(self, net, x0: Tensor, y: Tensor | None = None, *, ema=None) -> Tensor:
        esd = super().__call__(net, x0, y)
        s = self.s_min + (1 - self.s_min) * torch.rand(x0.shape[0], device=x0.device)
        s = torch.where(torch.rand_like(s) < self.long_fraction, torch.ones_like(s), s)
        x_s, _ = interpolate(self.interpolant, x0, torch.randn_like(x0), s)
        y = drop_labels(y, self.label_dropout, getattr(net, "num_classes", 0))
        x_0 = self.composite(ema if self.ema_targets else net, x_s, s, y)
        u = net(x_s, s, torch.zeros_like(s), y)
        return esd + self.terminal_weight * sqnorm(u - (x_s - x_0) / expand(s, x_s))

    @torch.no_grad()
    def composite(self, net, x: Tensor, s: Tensor, y: Tensor | None) -> Tensor:
        """X^k_{s,0}(x): k flow-map jumps on the uniform grid from s to 0, per sample."""
        for j in range(self.substeps):
            a, b = s * (1 - j / self.substeps), s * (1 - (j + 1) / self.substeps)
            x = x + expand(b - a, x) * net(x, a, b, y)
        return x


@dataclass
class Lagrangian:
    """lsd (Boffi, Albergo & Vanden-Eijnden 2025): diagonal flow matching plus
    ||d/dt X_{s,t}(x_s) - sg(u(X_{s,t}(x_s), t, t))||^2, the t-derivative by a forward-mode JVP."""

    interpolant: object = field(default_factory=Linear)
    time: TimeSampler = field(default_factory=lambda: TimeSampler(diagonal=0.25))
    adaptive_p: float = 0.0
    label_dropout: float = 0.1

    def __call__(self, net, x0: Tensor, y: Tensor | None = None) -> Tensor:
        n = x0.shape[0]
        s, t = self.time(n, x0.device)
        x_s, v = interpolate(self.interpolant, x0, torch.randn_like(x0), s)
        y = drop_labels(y, self.label_dropout, getattr(net, "num_classes", 0))
        diag = sqnorm(net(x_s, s, s, y) - v)
        err = lagrangian_error(net, x_s, s, t, y, lambda x, b: net(x, b, b, y))
        return diag + adaptive(err, self.adaptive_p)


@dataclass
class Progressive:
    """psd (shortcut models, Frans et al. 2024; progressive self-distillation, Boffi et al. 2025):
    X_{s,t} ~ sg(X_{m,t} o X_{s,m}), m = s + lam (t - s), both jumps by the EMA net; diagonal learns v."""

    interpolant: object = field(default_factory=Linear)
    time: TimeSampler = field(default_factory=lambda: TimeSampler(diagonal=0.5))
    label_dropout: float = 0.1
    split: str = "mid"  # mid: lam = 1/2 (shortcut); uniform: lam ~ U(0, 1)
    ema_targets: bool = True  # False: targets from sg(student) instead of the EMA net
    uses: ClassVar[tuple[str, ...]] = ("ema",)

    def __call__(self, net, x0: Tensor, y: Tensor | None = None, *, ema) -> Tensor:
        s, t = self.time(x0.shape[0], x0.device)
        x_s, v = interpolate(self.interpolant, x0, torch.randn_like(x0), s)
        y = drop_labels(y, self.label_dropout, getattr(net, "num_classes", 0))
        lam = torch.full_like(s, 0.5) if self.split == "mid" else torch.rand_like(s)
        target = torch.where(
            expand(s == t, v), v, self.composed(ema if self.ema_targets else net, x_s, s, t, lam, y)
        )
        return sqnorm(net(x_s, s, t, y) - target)

    @staticmethod
    @torch.no_grad()
    def composed(net, x_s: Tensor, s: Tensor, t: Tensor, lam: Tensor, y: Tensor | None) -> Tensor:
        """u of the two-jump composite: X_{m,t}(X_{s,m}(x)) = x + (t - s) (lam u1 + (1 - lam) u2)."""
        m = s + lam * (t - s)
        u1 = net(x_s, s, m, y)
        u2 = net(x_s + expand(m - s, x_s) * u1, m, t, y)
        return expand(lam, u1) * u1 + expand(1 - lam, u2) * u2


@dataclass
class ConsistencyTraining:
    """ct (consistency training, Song et al. 2023; iCT's sg(student) target): X_{s,0}(x_s) ~ sg(X_{r,0}(x_r)),
    r = s - delta on the same noise, weighted by 1 / (s - r)^2."""

    interpolant: object = field(default_factory=Linear)
    time: TimeSampler = field(default_factory=lambda: TimeSampler(diagonal=0.0))
    label_dropout: float = 0.1
    delta: float = 0.05
    uses: ClassVar[tuple[str, ...]] = ()

    def __call__(self, net, x0: Tensor, y: Tensor | None = None) -> Tensor:
        s = self.time.draw(x0.shape[0], x0.device)
        r = (s - self.delta).clamp_min(0.0)
        eps = torch.randn_like(x0)
        x_s, _ = interpolate(self.interpolant, x0, eps, s)
        x_r, _ = interpolate(self.interpolant, x0, eps, r)
        y = drop_labels(y, self.label_dropout, getattr(net, "num_classes", 0))
        return consistency_error(net, x_s, s, x_r, r, y)


def to_data(net, x: Tensor, s: Tensor, y: Tensor | None) -> Tensor:
    """The consistency function f(x, s) = X_{s,0}(x) = x - s u(x, s, 0, y)."""
    return x - expand(s, x) * net(x, s, torch.zeros_like(s), y)


def consistency_error(net, x_s: Tensor, s: Tensor, x_r: Tensor, r: Tensor, y: Tensor | None) -> Tensor:
    """||f(x_s, s) - sg(f(x_r, r))||^2 / (s - r)^2 (f(x, 0) = x exactly, the boundary condition)."""
    with torch.no_grad():
        target = to_data(net, x_r, r, y)
    return sqnorm(to_data(net, x_s, s, y) - target) / (s - r).clamp_min(1e-4) ** 2


@dataclass
class ConsistencyDistillation:
    """cd (consistency distillation, Song et al. 2023): as ct, x_r by one Heun step of the teacher ODE."""

    interpolant: object = field(default_factory=Linear)
    time: TimeSampler = field(default_factory=lambda: TimeSampler(diagonal=0.0))
    label_dropout: float = 0.1
    delta: float = 0.05
    guidance: float = 1.0  # CFG scale of the teacher velocity (baked into the student)
    uses: ClassVar[tuple[str, ...]] = ("teacher",)

    def __call__(self, net, x0: Tensor, y: Tensor | None = None, *, teacher) -> Tensor:
        s = self.time.draw(x0.shape[0], x0.device)
        r = (s - self.delta).clamp_min(0.0)
        x_s, _ = interpolate(self.interpolant, x0, torch.randn_like(x0), s)
        y = drop_labels(y, self.label_dropout, getattr(net, "num_classes", 0))
        b = _teacher_field(teacher, y, self.guidance, getattr(net, "num_classes", 0))
        return consistency_error(net, x_s, s, heun_solve(b, x_s, s, r, 1), r, y)


def _teacher_field(teacher, y: Tensor | None, guidance: float, null: int):
    return lambda x, tau: teacher_velocity(teacher, x, tau, y, guidance, null)


SOLVERS = {"heun": heun_solve_rows, "ab2": ab2_solve_rows}  # the teacher solves Distill can take


@dataclass
class Distill:
    """distill (direct regression, as in flow map matching, Boffi et al. 2024): X_{s,t}(x_s) ~
    X^teacher_{s,t}(x_s) by solving the teacher ODE, in u units; diagonal pairs learn the teacher velocity.

    The solve takes `ode_steps` steps per pair or, with `ode_dt` > 0, steps no longer than `ode_dt`
    (ceil((s - t) / ode_dt) of them, and at least `min_steps`): a short segment then costs as little as
    its length asks, and `min_steps` buys the short segments accuracy without the long ones' cost.
    `solver`: heun (two teacher calls a step) or ab2 (Adams-Bashforth, one call a step)."""

    interpolant: object = field(default_factory=Linear)
    time: TimeSampler = field(default_factory=lambda: TimeSampler(diagonal=0.25))
    label_dropout: float = 0.1
    ode_steps: int = 8
    ode_dt: float = 0.0
    guidance: float = 1.0
    solver: str = "heun"
    min_steps: int = 1
    uses: ClassVar[tuple[str, ...]] = ("teacher",)

    def __post_init__(self):
        if self.ode_steps < 1 or self.min_steps < 1:
            raise ValueError(f"ode_steps and min_steps must be >= 1, got {self.ode_steps}, {self.min_steps}")
        if self.solver not in SOLVERS:
            names = ", ".join(SOLVERS)
            raise ValueError(f"solver (--teacher-solver) must be one of {names}, got {self.solver!r}")
        if not 0.0 <= self.ode_dt <= 1.0:
            raise ValueError(
                f"ode_dt (--teacher-dt) must be in [0, 1] (0: ode_steps per pair), got {self.ode_dt}"
            )

    def __call__(self, net, x0: Tensor, y: Tensor | None = None, *, teacher) -> Tensor:
        s, t = self.time(x0.shape[0], x0.device)
        x_s, _ = interpolate(self.interpolant, x0, torch.randn_like(x0), s)
        null = getattr(net, "num_classes", 0)
        y = drop_labels(y, self.label_dropout, null)
        velocity = lambda rows: _teacher_field(teacher, None if y is None else y[rows], self.guidance, null)  # noqa: E731
        jump, target = (s - t) > 1e-4, torch.empty_like(x_s)
        rows = (~jump).nonzero().squeeze(1)  # diagonal rows need b(x_s, s) alone
        if len(rows):
            target[rows] = velocity(rows)(x_s[rows], s[rows]).to(target.dtype)
        rows = jump.nonzero().squeeze(1)
        if len(rows):
            x, a, z = x_s[rows], s[rows], t[rows]
            x_t = SOLVERS[self.solver](lambda r: velocity(rows[r]), x, a, z, self.solve_steps(a - z))
            target[rows] = ((x_t - x) / expand(z - a, x)).to(target.dtype)
        return sqnorm(net(x_s, s, t, y) - target)

    def solve_steps(self, length: Tensor) -> Tensor:
        """Steps of the teacher solve per pair of this segment length."""
        if self.ode_dt == 0.0:
            return torch.full_like(length, self.ode_steps, dtype=torch.long)
        return torch.ceil(length / self.ode_dt - 1e-4).clamp_min(self.min_steps).long()


@dataclass
class LagrangianDistill:
    """lmd (Lagrangian map distillation, Boffi et al. 2024): lsd with the teacher velocity b in place
    of the self-diagonal, ||u(x_s, s, s) - b(x_s, s)||^2 + ||d/dt X_{s,t}(x_s) - b(X_{s,t}(x_s), t)||^2."""

    interpolant: object = field(default_factory=Linear)
    time: TimeSampler = field(default_factory=lambda: TimeSampler(diagonal=0.25))
    adaptive_p: float = 0.0
    label_dropout: float = 0.1
    guidance: float = 1.0
    uses: ClassVar[tuple[str, ...]] = ("teacher",)

    def __call__(self, net, x0: Tensor, y: Tensor | None = None, *, teacher) -> Tensor:
        s, t = self.time(x0.shape[0], x0.device)
        x_s, _ = interpolate(self.interpolant, x0, torch.randn_like(x0), s)
        y = drop_labels(y, self.label_dropout, getattr(net, "num_classes", 0))
        b = _teacher_field(teacher, y, self.guidance, getattr(net, "num_classes", 0))
        diag = sqnorm(net(x_s, s, s, y) - b(x_s, s))
        return diag + adaptive(lagrangian_error(net, x_s, s, t, y, b), self.adaptive_p)


@dataclass
class EulerianDistill:
    """emd (Eulerian map distillation, Boffi et al. 2024): esd/MeanFlow with the teacher velocity b
    in place of the conditional v: u_tgt = b - (s - t) du/ds along dx/ds = b."""

    interpolant: object = field(default_factory=Linear)
    time: TimeSampler = field(default_factory=TimeSampler)
    adaptive_p: float = 0.5  # the teacher's targets are noise-free: p = 1 over-weights easy pairs (gmm8)
    label_dropout: float = 0.1
    guidance: float = 1.0
    uses: ClassVar[tuple[str, ...]] = ("teacher",)

    def __call__(self, net, x0: Tensor, y: Tensor | None = None, *, teacher) -> Tensor:
        s, t = self.time(x0.shape[0], x0.device)
        x_s, _ = interpolate(self.interpolant, x0, torch.randn_like(x0), s)
        y = drop_labels(y, self.label_dropout, getattr(net, "num_classes", 0))
        b = teacher_velocity(teacher, x_s, s, y, self.guidance, getattr(net, "num_classes", 0))
        return adaptive(eulerian_error(net, x_s, s, t, b, y), self.adaptive_p)


LOSSES = {
    "fm": FlowMatching,
    "esd": Eulerian,
    "esdt": EulerianTerminal,
    "lsd": Lagrangian,
    "psd": Progressive,
    "ct": ConsistencyTraining,
    "cd": ConsistencyDistillation,
    "distill": Distill,
    "lmd": LagrangianDistill,
    "emd": EulerianDistill,
}

# Methods that learn only X_{t,0}: sample them with the re-noising sampler (samplers.sample_stochastic);
# "consistency": a user's consistency function (flowmap.user).
CONSISTENCY_METHODS = ("ct", "cd", "consistency")


def uses(loss) -> tuple[str, ...]:
    """What a loss needs besides (net, x0, y): a subset of ("ema", "teacher")."""
    return tuple(getattr(loss, "uses", ()))


def make_loss(method: str, **kwargs):
    """Build the loss for `--method`; kwargs are the class's hyperparameters."""
    if method not in LOSSES:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[method](**kwargs)
