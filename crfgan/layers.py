"""Small building blocks shared by the networks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm


def log2_int(n: int, what: str) -> int:
    k = int(math.log2(n)) if n > 0 else -1
    assert k >= 0 and 2**k == n, f"{what} must be a power of two, got {n}"
    return k


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm(8) as in the reference; fewer groups only when a tiny width has fewer than 8 channels."""
    return nn.GroupNorm(min(8, channels), channels)


def sn_conv3d(*args, **kwargs) -> nn.Module:
    return spectral_norm(nn.Conv3d(*args, **kwargs))


def sn_linear(*args, **kwargs) -> nn.Module:
    return spectral_norm(nn.Linear(*args, **kwargs))


def lrelu(x):
    return F.leaky_relu(x, negative_slope=0.2)


def up2(x):
    """Nearest-neighbour ×2 upsampling, as in the reference (F.interpolate default mode)."""
    return F.interpolate(x, scale_factor=2, mode="nearest")


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def apply_group_norm(gn: nn.GroupNorm, h: torch.Tensor, stats=None) -> torch.Tensor:
    """GroupNorm with its own statistics, or with given ``(mean, var)`` per (batch, group)."""
    if stats is None:
        return gn(h)
    mean, var = stats  # (B, G)
    b, c = h.shape[:2]
    g = gn.num_groups
    hg = h.reshape(b, g, -1)
    hg = (hg - mean[:, :, None].to(h.dtype)) * torch.rsqrt(var[:, :, None].to(h.dtype) + gn.eps)
    h = hg.reshape(h.shape)
    shape = (1, c) + (1,) * (h.dim() - 2)
    return h * gn.weight.view(shape) + gn.bias.view(shape)
