"""Users' models written against docs/models.md, not flowmap nets: factories `usermodels:<fn>` (this folder
is on sys.path in tests; the server integration test puts it on PYTHONPATH). Specs are plain dicts, so
the module imports nothing from flowmap.

The Gaussian ones are exact for data N(M, SD^2 I) on the linear path x_t = (1 - t) x0 + t eps: the marginal
is N((1 - t) M, std_t^2 I) with std_t^2 = (1 - t)^2 SD^2 + t^2, and the ODE flow map is
X_{s,t}(x) = (1 - t) M + std_t / std_s (x - (1 - s) M); so a sample from noise z is M + SD z exactly.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

M = torch.tensor([1.0, -2.0])
SD = 0.5


def std(t):
    return ((1 - t) ** 2 * SD**2 + t**2).sqrt()


def exact_map(x, s, t):
    """X_{s,t}(x) in our time (t = 1 noise)."""
    s, t = s[:, None], t[:, None]
    return (1 - t) * M + std(t) / std(s) * (x - (1 - s) * M)


def exact_velocity(x, t):
    """dx/dt along the flow in our time."""
    t = t[:, None]
    dstd = (t - (1 - t) * SD**2) / std(t)
    return -M + dstd / std(t) * (x - (1 - t) * M)


class GaussFlowMap(nn.Module):
    """flow_map, time ours: X_{s,t}(x) returned directly."""

    def forward(self, x, s, t, y):
        return exact_map(x, s, t)


class GaussMeanFlow(nn.Module):
    """average_velocity, time reversed (tau = 0 noise, MeanFlow code's convention): X = x + (b - a) u."""

    def forward(self, x, a, b, y):
        s, t = 1 - a, 1 - b  # our times
        diag = (a - b).abs()[:, None] < 1e-6
        du = (exact_map(x, s, t) - x) / torch.where(diag, 1.0, (b - a)[:, None])
        return torch.where(diag, -exact_velocity(x, s), du)


class GaussVelocity(nn.Module):
    """velocity, time ours."""

    def forward(self, x, t, y):
        return exact_velocity(x, t)


class GaussSigmaConsistency(nn.Module):
    """consistency, sigma time (EDM: x = x0 + sigma eps): f = M + SD (x - M) / sqrt(SD^2 + sigma^2)."""

    def forward(self, x, sigma, y):
        return M + SD / (SD**2 + sigma[:, None] ** 2).sqrt() * (x - M)


class GaussSigmaFlowMap(nn.Module):
    """flow_map, sigma time: X(x, a, b) = M + sqrt(SD^2 + b^2) / sqrt(SD^2 + a^2) (x - M), EDM's exact ODE."""

    def forward(self, x, a, b, y):
        return M + ((SD**2 + b**2) / (SD**2 + a**2)).sqrt()[:, None] * (x - M)


class GaussSigmaVelocity(nn.Module):
    """velocity, sigma time: dx/dsigma = (x - D(x, sigma)) / sigma = (x - M) sigma / (SD^2 + sigma^2)."""

    def forward(self, x, sigma, y):
        return (x - M) * (sigma / (SD**2 + sigma**2))[:, None]


def gauss_sigma_flow_map():
    return GaussSigmaFlowMap(), {"shape": [2], "parameterisation": "flow_map", "time": "sigma"}


def gauss_sigma_velocity():
    spec = {"shape": [2], "parameterisation": "velocity", "time": "sigma", "solver": "heun"}
    return GaussSigmaVelocity(), spec


def gauss_flow_map():
    return GaussFlowMap(), {"shape": [2], "parameterisation": "flow_map", "time": "ours", "name": "gauss"}


def gauss_meanflow():
    spec = {"shape": [2], "parameterisation": "average_velocity", "time": "reversed", "name": "gauss-mf"}
    return GaussMeanFlow(), spec


def gauss_velocity():
    return GaussVelocity(), {"shape": [2], "parameterisation": "velocity", "name": "gauss-v"}


def gauss_velocity_heun():
    return GaussVelocity(), {
        "shape": [2],
        "parameterisation": "velocity",
        "solver": "heun",
        "name": "gauss-h",
    }


def gauss_sigma():
    spec = {"shape": [2], "parameterisation": "consistency", "time": "sigma", "name": "gauss-cm"}
    return GaussSigmaConsistency(), spec


class TinyDiT(nn.Module):
    """DiT-style (Peebles & Xie 2023): 2x2 patches of a [1, 8, 8] image, adaLN-modulated transformer
    blocks conditioned on (s, t) and the class (10 classes + the null label), average velocity."""

    def __init__(self, dim: int = 32, depth: int = 2, classes: int = 10):
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(1, dim, 2, stride=2)
        self.pos = nn.Parameter(0.02 * torch.randn(1, 16, dim))
        self.label = nn.Embedding(classes + 1, dim)
        self.time = nn.Sequential(nn.Linear(4, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.0, batch_first=True) for _ in range(depth)
        )
        self.ada = nn.ModuleList(nn.Linear(dim, 2 * dim) for _ in range(depth))
        self.out = nn.Linear(dim, 4)

    def forward(self, x, s, t, y):
        h = self.patch(x).flatten(2).transpose(1, 2) + self.pos  # [B, 16, dim]
        ts = torch.stack([s, t, torch.sin(math.pi * s), s - t], dim=1)
        c = self.time(ts) + self.label(y)
        for block, ada in zip(self.blocks, self.ada, strict=True):
            scale, shift = ada(c)[:, None].chunk(2, dim=-1)
            h = block(h * (1 + scale) + shift)
        p = self.out(h).view(-1, 4, 4, 2, 2).permute(0, 1, 3, 2, 4)  # [B, 4, 2, 4, 2]
        return p.reshape(-1, 1, 8, 8)


def tiny_dit():
    spec = {"shape": [1, 8, 8], "parameterisation": "average_velocity", "num_classes": 10, "name": "dit"}
    spec["guidance"] = 1.5  # as if trained with guidance 1.5 baked in (shown in /v1/models)
    return TinyDiT().eval(), spec


# ---- broken ones ---------------------------------------------------------------------------------


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def _velocity(fn, **spec):
    return Lambda(fn), {"shape": [2], "parameterisation": "velocity", **spec}


def wrong_shape():
    return _velocity(lambda x, t, y: x[:, :1])


def wrong_dtype():
    return _velocity(lambda x, t, y: x.double())


def nan_output():
    return _velocity(lambda x, t, y: torch.where(t[:, None] > 0.5, x * float("nan"), x))


def rows_depend():
    return _velocity(lambda x, t, y: x - x.mean(0, keepdim=True))


def lies_about_time():
    """The sigma consistency function declared with the reversed convention: f(x, data end) != x."""
    return GaussSigmaConsistency(), {"shape": [2], "parameterisation": "consistency", "time": "reversed"}


def lies_about_parameterisation():
    """An average velocity declared as a flow map: X_{s,s}(x) would be x, u(x, s, s) is not."""
    return GaussMeanFlow(), {"shape": [2], "parameterisation": "flow_map", "time": "reversed"}


def raises():
    return _velocity(lambda x, t, y: torch.linalg.inv(x))


def not_a_pair():
    return GaussVelocity()


class NumpyVelocity(nn.Module):
    """Computes in NumPy: right in eager, row by row, but a trace records its output as a constant (engine
    parity catches it)."""

    def forward(self, x, t, y):
        return torch.from_numpy(np.tanh(x.numpy()) * 0.5).to(x.dtype)


def numpy_velocity():
    return NumpyVelocity(), {"shape": [2], "parameterisation": "velocity", "name": "numpy-v"}


class Gmm8Velocity(nn.Module):
    """The exact velocity of DESIGN.md's gmm8 (8 Gaussians, radius 2, std 0.2) on the linear path: each
    component k is N((1 - t) mu_k, v_t I) at time t, weighted by its posterior given x."""

    def __init__(self):
        super().__init__()
        angles = torch.arange(8) * 2 * math.pi / 8
        self.register_buffer("mu", 2.0 * torch.stack([angles.cos(), angles.sin()], dim=1))  # [8, 2]

    def forward(self, x, t, y):
        t = t[:, None, None]
        var = (1 - t) ** 2 * 0.04 + t**2  # [B, 1, 1]
        d = x[:, None] - (1 - t) * self.mu  # [B, 8, 2]
        w = torch.softmax(-(d**2).sum(-1, keepdim=True) / (2 * var), dim=1)
        v = -self.mu + (t - (1 - t) * 0.04) / var * d
        return (w * v).sum(1)


def gmm8_velocity():
    spec = {"shape": [2], "parameterisation": "velocity", "solver": "heun", "data": "gmm8", "name": "gmm8-v"}
    return Gmm8Velocity(), spec


def mnist_as_user():
    """For the measurement in docs/models.md only: the shipped mnist network behind this protocol (as an
    average-velocity model in our time), so that a user's model and a checkpoint of the same size compare."""
    from flowmap.checkpoint import load_model

    net = load_model("mnist").net
    return net, {
        "shape": [1, 28, 28],
        "num_classes": 10,
        "parameterisation": "average_velocity",
        "name": "mnist-user",
    }


class RowLoop(nn.Module):
    """A Python loop over rows with a branch on each row's values: right in eager, but neither
    torch.export nor a trace captures it (a user model that does not export)."""

    def forward(self, x, t, y):
        return torch.stack([r * 0.5 if float(r.sum()) > 0 else -r for r in x])


def row_loop():
    return RowLoop(), {"shape": [2], "parameterisation": "velocity", "name": "row-loop"}
