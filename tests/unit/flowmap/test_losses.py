"""Every loss's target against a direct computation: finite differences, hand-composed jumps, and the
exact flow map of Gaussian data (at which every distillation residual must vanish)."""

from __future__ import annotations

import copy

import pytest
import torch

from flowmap import losses
from flowmap.interpolants import expand
from flowmap.samplers import flow_step
from flowmap.teacher import heun_solve, teacher_velocity
from flowmap.timesamplers import TimeSampler

torch.set_num_threads(1)
C = 0.7  # data std of the analytic Gaussian case


def sigma(t):
    """Std of x_t = (1 - t) x0 + t eps for x0 ~ N(0, C^2): sqrt((1 - t)^2 C^2 + t^2)."""
    return torch.sqrt((1 - t) ** 2 * C**2 + t**2)


def dsigma(t):
    return ((t - 1) * C**2 + t) / sigma(t)


class GaussFlow(torch.nn.Module):
    """The exact flow map of N(0, C^2 I) data: X_{s,t}(x) = x sigma_t / sigma_s, in u units."""

    num_classes = 0

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale  # scale != 1: a wrong map, so the residuals must not vanish

    def forward(self, x, s, t, y=None):
        s, t = expand(s.to(x.dtype), x), expand(t.to(x.dtype), x)
        diag = (s - t).abs() < 1e-12
        gap = torch.where(diag, torch.ones_like(s), t - s)
        u = torch.where(diag, dsigma(s) / sigma(s), (sigma(t) / sigma(s) - 1) / gap)
        return self.scale * u * x


def velocity(x, t):
    """b(x, t) = x sigma'_t / sigma_t, the teacher velocity of the Gaussian case."""
    return x * expand(dsigma(t.to(x.dtype)) / sigma(t.to(x.dtype)), x)


def teacher(x, s, t, y=None):
    return velocity(x, s)


class SmoothNet(torch.nn.Module):
    """A generic smooth u(x, s, t) in float64 (finite differences need the precision)."""

    num_classes = 0

    def __init__(self):
        super().__init__()
        self.f = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))

    def forward(self, x, s, t, y=None):
        return self.f(torch.cat([x, s[:, None], t[:, None]], dim=1))


def mlp():
    torch.manual_seed(0)
    return SmoothNet().double()


def pairs(n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.rand(n, generator=g, dtype=torch.float64), torch.rand(n, generator=g, dtype=torch.float64)
    s, t = 0.05 + 0.9 * torch.maximum(a, b), 0.05 + 0.9 * torch.minimum(a, b)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return x, s, t


def test_eulerian_jvp_matches_finite_differences():
    net, (x, s, t) = mlp(), pairs()
    v = torch.randn_like(x)
    u, target = losses.eulerian_target(net, x, s, t, v, None)
    h = 1e-5
    du_ds = (net(x + h * v, s + h, t) - net(x - h * v, s - h, t)) / (2 * h)
    assert torch.allclose(u, net(x, s, t))
    assert torch.allclose(target, v - expand(s - t, v) * du_ds, atol=1e-7)
    assert not torch.allclose(target, v, atol=1e-3)  # the derivative term is really there


def test_lagrangian_jvp_matches_finite_differences():
    net, (x, s, t) = mlp(), pairs()
    dx_dt, target = losses.lagrangian_target(net, x, s, t, None, lambda z, tau: net(z, tau, tau))
    h = 1e-5
    fd = (flow_step(net, x, s, t + h) - flow_step(net, x, s, t - h)) / (2 * h)
    assert torch.allclose(dx_dt, fd, atol=1e-7)
    x_t = flow_step(net, x, s, t)
    assert torch.allclose(target, net(x_t, t, t))


@pytest.mark.parametrize("split", ["mid", "uniform"])
def test_psd_target_is_two_hand_composed_jumps(split):
    net, (x, s, t) = mlp(), pairs()
    lam = torch.full_like(s, 0.5) if split == "mid" else torch.rand_like(s)
    u_tgt = losses.Progressive.composed(net, x, s, t, lam, None)
    m = s + lam * (t - s)
    by_hand = flow_step(net, flow_step(net, x, s, m), m, t)  # X_{m,t}(X_{s,m}(x))
    assert torch.allclose(flow_step(lambda *_: u_tgt, x, s, t), by_hand, atol=1e-12)


def test_psd_uses_ema_targets_and_v_on_the_diagonal():
    net = mlp()
    ema = copy.deepcopy(net)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x0 = torch.randn(256, 2, dtype=torch.float64)
    loss = losses.Progressive(time=TimeSampler("uniform", diagonal=0.0), label_dropout=0.0)
    torch.manual_seed(3)
    with_ema = loss(net, x0, ema=ema)
    torch.manual_seed(3)
    with_self = loss(net, x0, ema=net)
    assert not torch.allclose(with_ema, with_self)
    torch.manual_seed(3)  # all diagonal: the loss is flow matching, whatever the EMA net is
    diag = losses.Progressive(time=TimeSampler("uniform", diagonal=1.0), label_dropout=0.0)(net, x0, ema=ema)
    torch.manual_seed(3)
    fm = losses.FlowMatching(time=TimeSampler("uniform", diagonal=1.0), label_dropout=0.0)(net, x0)
    assert torch.allclose(diag, fm)


def test_consistency_target_by_hand():
    net, (x0, s, _) = mlp(), pairs()
    eps = torch.randn_like(x0)
    r = (s - 0.1).clamp_min(0)
    x_s, x_r = expand(1 - s, x0) * x0 + expand(s, x0) * eps, expand(1 - r, x0) * x0 + expand(r, x0) * eps
    f = lambda z, tau: z - expand(tau, z) * net(z, tau, torch.zeros_like(tau))  # X_{tau,0}(z)
    expected = ((f(x_s, s) - f(x_r, r)) ** 2).mean(1) / (s - r) ** 2
    assert torch.allclose(losses.consistency_error(net, x_s, s, x_r, r, None), expected)
    zero = torch.zeros_like(s)  # boundary: X_{0,0} = id, so the target at r = 0 is the data itself
    assert torch.allclose(losses.to_data(net, x0, zero, None), x0)


def gauss_batch(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    return C * torch.randn(n, 2, generator=g, dtype=torch.float64)


def residual(loss, net, **extras):
    torch.manual_seed(5)
    return float(loss(net, gauss_batch(), None, **extras).mean())


@pytest.mark.parametrize(
    "make, tol",
    [
        (lambda: losses.EulerianDistill(adaptive_p=0.0), 1e-12),
        (lambda: losses.LagrangianDistill(), 1e-12),
        (lambda: losses.Distill(ode_steps=8), 1e-6),
        (lambda: losses.ConsistencyDistillation(delta=0.05), 1e-5),
    ],
    ids=["emd", "lmd", "distill", "cd"],
)
def test_teacher_losses_vanish_at_the_exact_flow_map(make, tol):
    loss = make()
    exact = residual(loss, GaussFlow(), teacher=teacher)
    wrong = residual(loss, GaussFlow(scale=1.1), teacher=teacher)
    assert exact < tol, exact
    assert wrong > 100 * max(exact, 1e-12), (exact, wrong)


def test_self_distillation_targets_vanish_at_the_exact_flow_map():
    exact, wrong = GaussFlow(), GaussFlow(scale=1.1)
    _, s, t = pairs()
    x = torch.randn(len(s), 2, dtype=torch.float64)
    lam = torch.rand_like(s)
    assert torch.allclose(losses.Progressive.composed(exact, x, s, t, lam, None), exact(x, s, t))
    assert not torch.allclose(losses.Progressive.composed(wrong, x, s, t, lam, None), wrong(x, s, t))
    for net, small in ((exact, True), (wrong, False)):  # lsd's off-diagonal term, self-diagonal as b
        err = losses.lagrangian_error(net, x, s, t, None, lambda z, tau, n=net: n(z, tau, tau))
        assert (float(err.max()) < 1e-12) == small
    u, target = losses.eulerian_target(exact, x, s, t, velocity(x, s), None)  # esd with v = b
    assert torch.allclose(u, target, atol=1e-12)


def test_esdt_terminal_target_is_k_hand_composed_jumps_and_vanishes_at_the_exact_map():
    net, (x, s, _) = mlp(), pairs()
    loss = losses.EulerianTerminal(substeps=3)
    by_hand, grid = x, [s, 2 * s / 3, s / 3, torch.zeros_like(s)]
    for a, b in zip(grid[:-1], grid[1:], strict=True):
        by_hand = flow_step(net, by_hand, a, b)
    assert torch.allclose(loss.composite(net, x, s, None), by_hand, atol=1e-12)
    exact, wrong = GaussFlow(), GaussFlow(scale=1.1)  # X^k_{s,0} = X_{s,0} only for the exact map
    assert torch.allclose(loss.composite(exact, x, s, None), flow_step(exact, x, s, torch.zeros_like(s)))
    assert not torch.allclose(loss.composite(wrong, x, s, None), flow_step(wrong, x, s, torch.zeros_like(s)))


@pytest.mark.parametrize("ema_targets", [False, True])
def test_esdt_is_esd_plus_the_weighted_terminal_residual(ema_targets):
    net, x0 = mlp(), gauss_batch(256)
    ema = copy.deepcopy(net)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.1 * torch.randn_like(p))
    kw = dict(time=TimeSampler("uniform"), label_dropout=0.0, ema_targets=ema_targets)
    torch.manual_seed(3)
    esd = losses.Eulerian(time=TimeSampler("uniform"), label_dropout=0.0)(net, x0)
    torch.manual_seed(3)
    off = losses.EulerianTerminal(terminal_weight=0.0, **kw)(net, x0, ema=ema)
    torch.manual_seed(3)
    on = losses.EulerianTerminal(terminal_weight=2.0, long_fraction=0.0, **kw)(net, x0, ema=ema)
    assert torch.allclose(off, esd)
    torch.manual_seed(3)
    losses.Eulerian(time=TimeSampler("uniform"), label_dropout=0.0)(net, x0)  # replay the esd draws
    s = (0.05 + 0.95 * torch.rand(len(x0))).double()  # the loss's s ~ U(s_min, 1), then its long-jump coin
    torch.rand(len(x0))
    x_s = expand(1 - s, x0) * x0 + expand(s, x0) * torch.randn_like(x0)
    target = losses.EulerianTerminal(substeps=4).composite(ema if ema_targets else net, x_s, s, None)
    term = ((net(x_s, s, 0 * s) - (x_s - target) / expand(s, x_s)) ** 2).mean(1)
    assert torch.allclose(on, esd + 2.0 * term)


def test_make_loss_rejects_unknown_methods_and_registry_is_complete():
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        losses.make_loss("nope")
    assert set(losses.LOSSES) >= {"fm", "lsd", "esd", "psd", "ct", "cd", "distill", "lmd", "emd"}
    assert losses.uses(losses.make_loss("psd")) == ("ema",) == losses.uses(losses.make_loss("esdt"))
    assert {m for m in losses.LOSSES if "teacher" in losses.uses(losses.make_loss(m))} == {
        "cd",
        "distill",
        "lmd",
        "emd",
    }


def test_grid_times_are_served_segments():
    """dist="grid": every pair is a segment of a uniform 1..grid_max step schedule (or diagonal)."""
    torch.manual_seed(0)
    s, t = TimeSampler("grid", diagonal=0.0, grid_max=4)(4000)
    n = torch.round(1.0 / (s - t))
    assert set(n.unique().tolist()) == {1.0, 2.0, 3.0, 4.0}
    assert torch.allclose(s * n, torch.round(s * n), atol=1e-5) and (t >= -1e-6).all()
    assert ((s == 1.0) & (t.abs() < 1e-6)).float().mean().item() > 0.2  # the one-step jump: 1/4 of pairs
    s, t = TimeSampler("grid", diagonal=1.0)(100)
    assert torch.equal(s, t)


def test_distill_diagonal_rows_skip_the_teacher_solve():
    """Diagonal rows regress the teacher velocity b(x_s, s) itself; jump rows the Heun solve."""
    net, teacher = mlp(), mlp()
    x0 = torch.randn(64, 2, dtype=torch.float64)
    calls = []
    fwd = teacher.forward
    teacher.forward = lambda x, *a, **k: calls.append(x.shape[0]) or fwd(x, *a, **k)
    loss = losses.Distill(time=TimeSampler("uniform", diagonal=1.0), label_dropout=0.0, ode_steps=8)
    loss(net, x0, teacher=teacher)
    assert calls == [64]


class LabelNet(SmoothNet):
    """SmoothNet plus a per-label shift: a 3-class teacher whose guided velocity depends on y (3: null)."""

    num_classes = 3

    def __init__(self):
        super().__init__()
        self.e = torch.nn.Embedding(4, 2)

    def forward(self, x, s, t, y=None):
        return super().forward(x, s, t) + self.e(y)


def test_distill_solves_each_segment_in_steps_no_longer_than_ode_dt():
    """--teacher-dt: a (1, 0) jump takes 1/dt Heun steps, a quarter of it a quarter as many; every row's
    target is its own guided solve at that count, as if solved alone; the teacher runs 1 + 2 * 8 calls."""
    loss = losses.Distill(
        time=TimeSampler("grid", diagonal=0.2), label_dropout=0.3, ode_dt=0.125, guidance=1.5
    )
    lengths = torch.tensor([1.0, 0.5, 1 / 3, 0.25, 0.01, 0.0])
    assert loss.solve_steps(lengths).tolist() == [8, 4, 3, 2, 1, 1]
    assert losses.Distill(ode_steps=5).solve_steps(lengths).tolist() == [5] * 6
    # --teacher-min-steps: short segments take at least that many, long ones are unchanged
    assert losses.Distill(ode_dt=0.125, min_steps=3).solve_steps(lengths).tolist() == [8, 4, 3, 3, 3, 3]
    with pytest.raises(ValueError, match="ode_dt"):
        losses.Distill(ode_dt=-0.1)

    torch.manual_seed(0)
    teacher = LabelNet().double()
    seen = {}

    class Student(torch.nn.Module):  # u = 0: the loss is then the target's own squared norm, row by row
        num_classes = 3

        def forward(self, x, s, t, y=None):
            seen.update(x=x, s=s, t=t, y=y)
            return torch.zeros_like(x)

    calls = []
    fwd = teacher.forward
    teacher.forward = lambda x, *a, **k: calls.append(x.shape[0]) or fwd(x, *a, **k)
    torch.manual_seed(3)
    y = torch.randint(0, 3, (256,))
    per_row = loss(Student(), torch.randn(256, 2, dtype=torch.float64), y, teacher=teacher)
    rows_evaluated, n_calls = sum(calls), len(calls)
    x, s, t, y = seen["x"], seen["s"], seen["t"], seen["y"]
    assert (y == 3).any() and (y < 3).any()  # some labels dropped: those rows are unguided
    jumps = (s - t) > 1e-4
    with torch.no_grad():
        for i in range(len(x)):
            one = slice(i, i + 1)
            b = lambda z, tau: teacher_velocity(teacher, z, tau, y[one], 1.5, 3)  # noqa: B023, E731
            if not jumps[i]:
                want = b(x[one], s[one])
            else:
                k = int(loss.solve_steps(s[one] - t[one]))
                want = (heun_solve(b, x[one], s[one], t[one], k) - x[one]) / (t[i] - s[i])
            assert torch.allclose(per_row[i], want.pow(2).mean(), rtol=1e-9), i
    guided = 2  # a conditional and a null call per velocity
    assert n_calls == guided * (1 + 2 * 8)
    assert rows_evaluated == guided * (int((~jumps).sum()) + 2 * int(loss.solve_steps(s - t)[jumps].sum()))


def test_ab2_solve_is_second_order_at_one_call_a_step_and_rows_solve_as_if_alone():
    """--teacher-solver ab2: on dx/dtau = -x tau (exact x e^{(s^2 - t^2)/2}) halving the step quarters the
    error; rows with different counts match their own solo solves; the field is called max(steps) times."""
    from flowmap.teacher import ab2_solve_rows

    calls = []

    def field(rows):
        return lambda x, tau: calls.append(len(rows)) or -x * expand(tau, x)

    x = torch.randn(4, 3, dtype=torch.float64)
    s, t = torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    exact = x * torch.exp(torch.tensor(0.5, dtype=torch.float64))
    err = [(ab2_solve_rows(field, x, s, t, torch.full((4,), n)) - exact).abs().max() for n in (16, 32, 64)]
    assert 3.5 < err[0] / err[1] < 4.5 and 3.5 < err[1] / err[2] < 4.5, err

    calls.clear()
    steps = torch.tensor([8, 4, 2, 1])
    both = ab2_solve_rows(field, x, s, t * 0 + 0.5, steps)
    assert calls == [4, 3, 2, 2, 1, 1, 1, 1]  # one call a step, rows drop out when done
    for i in range(4):
        one = slice(i, i + 1)
        alone = ab2_solve_rows(field, x[one], s[one], t[one] * 0 + 0.5, steps[one])
        assert torch.allclose(both[one], alone, rtol=1e-12), i


def test_distill_with_ab2_takes_one_teacher_call_a_step():
    loss = losses.Distill(time=TimeSampler("grid", diagonal=0.2), ode_dt=0.0625, solver="ab2")
    teacher = torch.nn.Linear(2, 2).double()
    calls = []
    net = lambda x, s, t, y=None: calls.append(x.shape[0]) or teacher(x)  # noqa: E731
    torch.manual_seed(0)
    loss(lambda x, s, t, y=None: torch.zeros_like(x), torch.randn(64, 2, dtype=torch.float64), teacher=net)
    assert len(calls) == 1 + 16  # the diagonal rows' call, then 16 steps for the (1, 0) jumps
    with pytest.raises(ValueError, match="one of heun, ab2"):
        losses.Distill(solver="rk4")
