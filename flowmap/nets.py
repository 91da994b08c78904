"""Networks u_theta(x, s, t, y): an MLP for vectors and small images, a multi-resolution U-Net.

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
        feats = torch.cat([fourier(s, self.dim), fourier(s - t, self.dim)], dim=-1)  # float32 phases
        emb = self.time(feats.to(self.time[0].weight.dtype))
        if self.label is not None:
            if y is None:
                y = torch.full_like(s, self.num_classes, dtype=torch.long)
            emb = emb + self.label(y)
        return emb


def _times(x: Tensor, s, t) -> tuple[Tensor, Tensor]:
    """Per-sample times [B] from scalars or [B] tensors, in x's dtype, at least float32 (a bf16 time
    would put a 1000x-scaled Fourier phase off by radians)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    s = torch.as_tensor(s, dtype=dtype, device=x.device)
    t = torch.as_tensor(t, dtype=dtype, device=x.device)
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
    """Pre-norm residual conv block, FiLM-conditioned on the time/label embedding."""

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


class Attention(nn.Module):
    """Multi-head self-attention over pixels, residual (plain matmuls: forward-mode AD and export work)."""

    def __init__(self, ch: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.norm, self.qkv, self.proj = nn.GroupNorm(8, ch), nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)

    def forward(self, h: Tensor) -> Tensor:
        b, ch, hh, ww = h.shape
        q, k, v = self.qkv(self.norm(h)).reshape(b, 3, self.heads, ch // self.heads, hh * ww).unbind(1)
        w = torch.softmax(q.transpose(-1, -2) @ k * (ch // self.heads) ** -0.5, dim=-1)  # [B, h, N, N]
        return h + self.proj((v @ w.transpose(-1, -2)).reshape(b, ch, hh, ww))


class UNet(nn.Module):
    """Multi-resolution U-Net (DDPM/ADM layout): per level `blocks` FiLM conv blocks at
    `width * mults[i]` channels, average-pool down (28 -> 14 -> 7), nearest up with the level's skip
    concatenated, self-attention at the lowest resolution only (`attention="lowest"`, or "none")."""

    def __init__(
        self,
        shape: list[int],
        width: int = 64,
        mults: str = "1,2,2",
        blocks: int = 2,
        attention: str = "lowest",
        num_classes: int = 0,
        emb: int = 128,
    ):
        super().__init__()
        chans = [width * int(m) for m in str(mults).split(",")]
        if any(c % 8 for c in chans) or attention not in ("lowest", "none") or blocks < 1:
            raise ValueError(
                f"U-Net: width x mults {chans} must be multiples of 8, blocks >= 1, "
                f"attention lowest or none (got {attention!r})"
            )
        self.shape, self.num_classes, self.attention = list(shape), num_classes, attention
        self.cond = Conditioning(emb, num_classes)
        self.inp = nn.Conv2d(shape[0], chans[0], 3, padding=1)
        cins = [chans[0], *chans[:-1]]
        self.down = nn.ModuleList(
            self._level(ci, co, blocks, emb) for ci, co in zip(cins, chans, strict=True)
        )
        self.mid = self._level(chans[-1], chans[-1], 2, emb)
        self.attn = Attention(chans[-1]) if attention == "lowest" else nn.Identity()
        couts = [chans[0], *chans[:-1]]
        self.up = nn.ModuleList(
            self._level(2 * c, co, blocks, emb) for c, co in zip(chans, couts, strict=True)
        )
        self.out = nn.Sequential(
            nn.GroupNorm(8, chans[0]), nn.SiLU(), nn.Conv2d(chans[0], shape[0], 3, padding=1)
        )

    @staticmethod
    def _level(cin: int, cout: int, blocks: int, emb: int) -> nn.ModuleList:
        return nn.ModuleList(ConvBlock(cin if i == 0 else cout, cout, emb) for i in range(blocks))

    @staticmethod
    def _run(level: nn.ModuleList, h: Tensor, c: Tensor) -> Tensor:
        for block in level:
            h = block(h, c)
        return h

    def forward(self, x: Tensor, s, t, y: Tensor | None = None) -> Tensor:
        s, t = _times(x, s, t)
        c = torch.nn.functional.silu(self.cond(s, t, y))
        h, skips = self.inp(x), []
        for i, level in enumerate(self.down):
            if i > 0:
                h = torch.nn.functional.avg_pool2d(h, 2)  # [B, C_i, H / 2^i, W / 2^i]
            h = self._run(level, h, c)
            skips.append(h)
        h = self.mid[1](self.attn(self.mid[0](h, c)), c)
        for i in reversed(range(len(self.up))):
            skip = skips[i]
            if h.shape[-1] != skip.shape[-1]:
                h = torch.nn.functional.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = self._run(self.up[i], torch.cat([h, skip], dim=1), c)
        return self.out(h)  # [B, C, H, W]


ARCHS = {"mlp": MLP, "unet": UNet}


def build_net(arch: dict) -> nn.Module:
    """Build a net from its config, e.g. {"name": "mlp", "shape": [2], "width": 256, ...}."""
    kwargs = dict(arch)
    name = kwargs.pop("name")
    if name not in ARCHS:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(ARCHS)}")
    return ARCHS[name](**kwargs)
