"""Half-encoder E: an image (a sub-volume or the whole volume) → the embedding space of A.

Reference: HA-GAN / CRF-GAN ``Encoder``: Conv(1→Ce/2, k4 s2) → Conv(Ce/2→Ce/2, k3) → Conv(Ce/2→Ce, k4 s2), each
with GroupNorm(8) + ReLU. With an S/8 embedding, one more k4 s2 conv at Ce/2 is inserted.
Trained by L1 reconstruction through G^H; its embedding of the real volume, E(x), is the CRF's "real" input.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .layers import group_norm, log2_int


def _block(cin: int, cout: int, k: int, s: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, k, stride=s, padding=1), group_norm(cout), nn.ReLU())


class HalfEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        ce = cfg.emb_channels
        n_down = log2_int(cfg.image_size // cfg.emb_size, "image size / embedding size")
        layers = [_block(1, ce // 2, 4, 2), _block(ce // 2, ce // 2, 3, 1)]
        layers += [_block(ce // 2, ce // 2, 4, 2) for _ in range(n_down - 2)]
        layers += [_block(ce // 2, ce, 4, 2)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 1, D, S, S) → (B, Ce, D·E/S, E, E)."""
        return self.net(x)
