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


def fusable(conv: nn.Module) -> bool:
    """Whether ``up2_conv`` fuses ``conv``: a Conv3d(k3, stride 1, zero padding 1, no dilation or groups)."""
    return (isinstance(conv, nn.Conv3d) and conv.kernel_size == (3, 3, 3) and conv.stride == (1, 1, 1)
            and conv.padding == (1, 1, 1) and conv.dilation == (1, 1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


# Per axis and output phase, the coarse taps a nearest ×2 upsampling + 3-tap kernel reduces to: even outputs read
# coarse offsets (-1, 0) with taps (w0, w1 + w2), odd outputs (0, +1) with (w0 + w1, w2). Shape (phase, tap, k).
_PHASES = ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0))
_TAP_MAPS: dict = {}


def phase_kernels(w: torch.Tensor) -> torch.Tensor:
    """(O, I, 3, 3, 3) → (8, O, I, 2, 2, 2): the 2×2×2 kernel of each output phase (pz, py, px): one matrix product
    of the flattened taps with the fixed 27 × 64 tap map (weight-sized memory traffic, not a chain of copies)."""
    key = (w.dtype, w.device)
    t = _TAP_MAPS.get(key)
    if t is None:  # built once per dtype and device: no host-to-device copy per call on a GPU
        m = torch.tensor(_PHASES, dtype=torch.float64)  # (phase, tap, k)
        t = _TAP_MAPS[key] = torch.einsum("pdz,qey,rfx->zyxpqrdef", m, m, m).reshape(27, 64).to(w.device, w.dtype)
    o, i = w.shape[:2]
    return (w.reshape(o * i, 27) @ t).view(o, i, 8, 2, 2, 2).permute(2, 0, 1, 3, 4, 5).contiguous()


def up2_conv(conv: nn.Module, x: torch.Tensor, fused: bool = True, kernels: torch.Tensor | None = None) -> torch.Tensor:
    """``conv(up2(x))``. For a Conv3d(k3, stride 1, zero padding 1), ``fused`` computes the same function without
    the upsampled tensor: each of the 8 output phases is a 2×2×2 convolution of the zero-padded coarse input with
    the kernel's repeated taps summed (8 multiply-adds per output voxel and input channel instead of 27). Equal to
    float rounding (tests/crfgan/test_layers.py); any other conv, or ``fused=False``: the plain two steps.
    ``kernels``: ``phase_kernels(conv.weight)`` computed by the caller (outside an activation-checkpointed region:
    what the product saves depends on whether the weight requires grad, which the step may change before backward)."""
    if not (fused and fusable(conv)):
        return conv(up2(x))
    w, b = conv.weight, conv.bias
    xp = F.pad(x, (1, 1, 1, 1, 1, 1))
    d, h, wd = x.shape[2:]
    fmt = (torch.channels_last_3d if x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
           else torch.contiguous_format)
    y = None
    k = phase_kernels(w) if kernels is None else kernels
    for p in range(8):
        pz, py, px = p >> 2, (p >> 1) & 1, p & 1
        part = F.conv3d(xp[:, :, pz:pz + d + 1, py:py + h + 1, px:px + wd + 1], k[p], b)
        if y is None:  # the output's dtype is the conv's (autocast may lower it)
            y = torch.empty((x.shape[0], w.shape[0], 2 * d, 2 * h, 2 * wd), dtype=part.dtype, device=part.device,
                            memory_format=fmt)
        y[:, :, pz::2, py::2, px::2] = part
    return y


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
