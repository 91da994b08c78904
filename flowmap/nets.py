"""Networks u_theta(x, s, t, y): an MLP for vectors and images, a small U-Net for images.

Every net takes x: [B, *shape], s: [B], t: [B], y: [B] long or None (None means the null label
C, used by classifier-free guidance) and returns u with the shape of x.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def fourier(t: Tensor, dim: int, scale: float = 1000.0) -> Tensor:
    """Sinusoidal embedding of t: [B] -> [B, dim] (transformer/DDPM style)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    args = scale * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Conditioning(nn.Module):
    """Embeds (s, s - t) and the class label into one vector (MeanFlow found (t, t - r) best)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.dim, self.num_classes = dim, num_classes
        self.time = nn.Sequential(nn.Linear(2 * dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label = nn.Embedding(num_classes + 1, dim) if num_classes > 0 else None

    def forward(self, s: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        emb = self.time(torch.cat([fourier(s, self.dim), fourier(s - t, self.dim)], dim=-1))
        if self.label is not None:
            if y is None:
                y = torch.full_like(s, self.num_classes, dtype=torch.long)
            emb = emb + self.label(y)
        return emb


def _times(x: Tensor, s, t) -> tuple[Tensor, Tensor]:
    """Per-sample times [B] from scalars or [B] tensors, in x's dtype."""
    s = torch.as_tensor(s, dtype=x.dtype, device=x.device)
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return s.expand(x.shape[0]), t.expand(x.shape[0])


class ResBlock(nn.Module):
    """Pre-norm residual MLP block with FiLM conditioning."""

    def __init__(self, width: int, cond: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.film = nn.Linear(cond, 2 * width)
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        scale, shift = self.film(c).chunk(2, dim=-1)
        z = self.norm(h) * (1 + scale) + shift
        return h + self.fc2(torch.nn.functional.silu(self.fc1(torch.nn.functional.silu(z))))


class MLP(nn.Module):
    """Residual MLP on the flattened input; works for vectors (gmm8) and small images (digits)."""

    def __init__(
        self, shape: list[int], width: int = 256, depth: int = 4, num_classes: int = 0, emb: int = 128
    ):
        super().__init__()
        self.shape, self.num_classes = list(shape), num_classes
        d = math.prod(shape)
        self.cond = Conditioning(emb, num_classes)
        self.inp = nn.Linear(d, width)
        self.blocks = nn.ModuleList(ResBlock(width, emb) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, d))

    def forward(self, x: Tensor, s, t, y: Tensor | None = None) -> Tensor:
        s, t = _times(x, s, t)
        c = torch.nn.functional.silu(self.cond(s, t, y))
        h = self.inp(x.reshape(x.shape[0], -1))
        for block in self.blocks:
            h = block(h, c)
        return self.out(h).reshape(x.shape)


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, cond: int):
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(8, cin), nn.GroupNorm(8, cout)
        self.conv1, self.conv2 = nn.Conv2d(cin, cout, 3, padding=1), nn.Conv2d(cout, cout, 3, padding=1)
        self.film = nn.Linear(cond, 2 * cout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        z = self.conv1(torch.nn.functional.silu(self.norm1(h)))
        scale, shift = self.film(c)[:, :, None, None].chunk(2, dim=1)
        z = self.norm2(z) * (1 + scale) + shift
        return self.skip(h) + self.conv2(torch.nn.functional.silu(z))


class UNet(nn.Module):
    """Two-level U-Net for small images (e.g. [1, 8, 8]): conv blocks, FiLM, one down/up."""

    def __init__(self, shape: list[int], width: int = 64, num_classes: int = 0, emb: int = 128):
        super().__init__()
        self.shape, self.num_classes = list(shape), num_classes
        ch = shape[0]
        self.cond = Conditioning(emb, num_classes)
        self.inp = nn.Conv2d(ch, width, 3, padding=1)
        self.down1 = ConvBlock(width, width, emb)
        self.pool = nn.AvgPool2d(2)
        self.mid1, self.mid2 = ConvBlock(width, 2 * width, emb), ConvBlock(2 * width, 2 * width, emb)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.up1 = ConvBlock(3 * width, width, emb)
        self.out = nn.Sequential(nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, ch, 3, padding=1))

    def forward(self, x: Tensor, s, t, y: Tensor | None = None) -> Tensor:
        s, t = _times(x, s, t)
        c = torch.nn.functional.silu(self.cond(s, t, y))
        h0 = self.down1(self.inp(x), c)  # [B, W, H, W]
        h1 = self.mid2(self.mid1(self.pool(h0), c), c)  # [B, 2W, H/2, W/2]
        h = self.up1(torch.cat([h0, self.up(h1)], dim=1), c)  # [B, W, H, W]
        return self.out(h)


ARCHS = {"mlp": MLP, "unet": UNet}


def build_net(arch: dict) -> nn.Module:
    """Build a net from its config, e.g. {"name": "mlp", "shape": [2], "width": 256, ...}."""
    kwargs = dict(arch)
    name = kwargs.pop("name")
    if name not in ARCHS:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(ARCHS)}")
    return ARCHS[name](**kwargs)
