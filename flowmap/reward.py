"""Rewards: callables on final samples in model space, x: [B, *shape] -> [B] scalars (higher is better).

Built in, named by a spec string (`make_reward`):
- `class:C`   log p(C | x) under the shipped classifier of the model's data (flowmap/classifier.py):
              digits [1, 8, 8] or mnist [1, 28, 28] images;
- `ink`       stroke mass: the mean pixel brightness in [0, 1] (a class-free reward), images;
- `mode:K`    gmm8: log N(x; mu_K, std^2 I), the log-density of mixture mode K (0..7), 2-D points.
Anything else of the form `package.module:function` is imported and called as r(x) -> [B].
Rewards must be differentiable in x for gradient guidance and fine-tuning (all built-ins are).
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from collections.abc import Callable

import torch
from torch import Tensor

from flowmap.data import GMM8_STD, gmm8_means
from flowmap.rewardspec import Builtin, RewardError, parse_builtin

Reward = Callable[[Tensor], Tensor]


class ClassLogProb:
    """log p(target | x) under a shipped classifier (digits by default; trained on the train split only)."""

    def __init__(self, target: int, classifier=None, device=None, data: str = "digits"):
        from flowmap.classifier import classifier_path, load_classifier

        self.target = target
        self.clf = classifier if classifier is not None else load_classifier(classifier_path(data))
        if device is not None:
            self.clf = self.clf.to(device).eval()

    def __call__(self, x: Tensor) -> Tensor:
        return torch.log_softmax(self.clf(x.float()), dim=1)[:, self.target]  # x: [B, 1, H, W]


class Ink:
    """Stroke mass: mean brightness (clip(x, -1, 1) + 1) / 2 over all pixels, in [0, 1]."""

    def __call__(self, x: Tensor) -> Tensor:
        return ((x.clamp(-1, 1) + 1) / 2).flatten(1).mean(1)


class GMM8Mode:
    """log N(x; mu_k, std^2 I) for gmm8's mode k (DESIGN.md: radius 2, std 0.2)."""

    def __init__(self, mode: int):
        self.mode = mode
        self.mean = gmm8_means(torch.float32)[mode]

    def __call__(self, x: Tensor) -> Tensor:
        d2 = ((x - self.mean.to(x)) ** 2).sum(1)  # x: [B, 2]
        return -d2 / (2 * GMM8_STD**2) - math.log(2 * math.pi * GMM8_STD**2)


def _builtin(b: Builtin, device) -> Reward:
    if b.name == "class":
        return ClassLogProb(b.arg, device=device, data=b.data)
    if b.name == "ink":
        return Ink()
    return GMM8Mode(b.arg)


def import_reward(spec: str) -> Reward:
    """`package.module:function` -> the function (no other code runs than the module's import)."""
    module, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:  # like uvicorn's --app-dir ".": a module beside the user is found
        sys.path.insert(0, os.getcwd())
    try:
        fn = getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise RewardError(f"reward {spec!r}: cannot import module {module!r} ({e})") from None
    except AttributeError:
        raise RewardError(f"reward {spec!r}: module {module!r} has no attribute {attr!r}") from None
    if not callable(fn):
        raise RewardError(f"reward {spec!r}: {attr!r} is not callable")
    return fn


def make_reward(spec: str, shape: list[int] | None = None, device=None) -> Reward:
    """A reward from its spec (`class:7`, `ink`, `mode:0`, `package.module:function`), checked
    against the model's sample shape when one is given; a built-in's network on `device` when given."""
    builtin = parse_builtin(spec, shape)
    if builtin is not None:
        return _builtin(builtin, device)
    name, sep, arg = spec.partition(":")
    if sep and name and arg:
        return import_reward(spec)
    raise RewardError(
        f"unknown reward {spec!r}: use class:C (digits), ink (images), mode:K (gmm8) "
        "or package.module:function"
    )


def evaluate_reward(reward: Reward, x: Tensor) -> Tensor:
    """r(x) as a [B] tensor; a clear error if a user reward returns anything else."""
    r = reward(x)
    if not isinstance(r, Tensor) or r.shape != (len(x),):
        got = tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__
        raise RewardError(f"reward must return a tensor of shape ({len(x)},), got {got}")
    return r


def gmm8_mode_tilted(mode: int, scale: float, n: int, generator: torch.Generator | None = None) -> Tensor:
    """n exact draws from gmm8 tilted by exp(scale * GMM8Mode(mode)): each component j becomes
    N((mu_j + scale mu_k) / (1 + scale), std^2 / (1 + scale)) with weight
    exp(-scale |mu_j - mu_k|^2 / (2 std^2 (1 + scale))) (a product of Gaussians)."""
    mu = gmm8_means(torch.float64)
    d2 = ((mu - mu[mode]) ** 2).sum(1)
    w = torch.softmax(-scale * d2 / (2 * GMM8_STD**2 * (1 + scale)), dim=0)
    j = torch.multinomial(w, n, replacement=True, generator=generator)
    means = (mu[j] + scale * mu[mode]) / (1 + scale)
    noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return (means + GMM8_STD / math.sqrt(1 + scale) * noise).float()
