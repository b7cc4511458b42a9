"""HA-GAN baseline parts: G^L (low-resolution generator), D^L (low-resolution discriminator), E^G (sub-encoder).

Reference: Sun et al., "Hierarchical Amortized GAN for 3D High Resolution Medical Image Synthesis" (IEEE JBHI 2022),
code batmanlab/HA-GAN ``models/Model_HA_GAN_{128,256}.py`` (``Sub_Generator``, ``Sub_Discriminator``,
``Sub_Encoder``). Widths from the config: the defaults reproduce the published parameter counts.
With ``arch: hagan`` the same G^A/G^H/D^H/E train alongside these, and no CRF.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers import group_norm, log2_int, lrelu, sn_conv3d


class LowResGenerator(nn.Module):
    """G^L: A (B, Ce, E³) → the whole volume at low resolution (B, 1, E³): Ce → Ce/2 → Ce/4 → 1, k3."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        ce = cfg.emb_channels
        self.net = nn.Sequential(
            nn.Conv3d(ce, ce // 2, 3, padding=1), group_norm(ce // 2), nn.ReLU(),
            nn.Conv3d(ce // 2, ce // 4, 3, padding=1), group_norm(ce // 4), nn.ReLU(),
            nn.Conv3d(ce // 4, 1, 3, padding=1), nn.Tanh(),
        )  # fmt: skip

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.net(a)


def _widths_to_4(size: int, top: int) -> list[int]:
    """Output widths of the stride-2 convs that bring ``size`` down to 4, ending at ``top``, halving backwards."""
    n = log2_int(size // 4, "low-resolution size / 4")
    return [max(top // 2 ** (n - 1 - i), 1) for i in range(n)]


class LowResDiscriminator(nn.Module):
    """D^L: spectral-norm convs (k4 s2) down to 4³, then a k4 conv to one logit (1 + K outputs when conditional,
    as the reference's ``Sub_Discriminator``)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        layers, cin = [], 1
        for w in _widths_to_4(cfg.emb_size, cfg.d_low_channels):
            layers.append(sn_conv3d(cin, w, kernel_size=4, stride=2, padding=1))
            cin = w
        self.convs = nn.ModuleList(layers)
        self.outputs = 1 + cfg.num_classes
        self.out = sn_conv3d(cin, self.outputs, kernel_size=4, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for conv in self.convs:
            h = lrelu(conv(h))
        return self.out(h).view(-1, self.outputs)


class SubEncoder(nn.Module):
    """E^G: the encoder's whole-volume embedding (B, Ce, E³) → z (B, L)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        layers, cin = [], cfg.emb_channels
        for w in _widths_to_4(cfg.emb_size, cfg.sub_encoder_channels):
            layers += [nn.Conv3d(cin, w, 4, stride=2, padding=1), group_norm(w), nn.ReLU()]
            cin = w
        self.net = nn.Sequential(*layers)
        self.out = nn.Conv3d(cin, cfg.latent_dim, 4, stride=1, padding=0)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.out(self.net(a)).flatten(1)


def low_res(volume: torch.Tensor, size: int) -> torch.Tensor:
    """The real volume at the low resolution D^L sees (HA-GAN: ``F.interpolate(x, scale_factor=0.25)``, nearest)."""
    return F.interpolate(volume, size=(size, size, size), mode="nearest")
