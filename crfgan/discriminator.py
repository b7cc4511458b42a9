"""D^H: the spectral-norm sub-volume discriminator with the sub-volume's depth position as an extra input.

Reference: HA-GAN / CRF-GAN ``Discriminator`` (D^H part). The input slab (B, 1, S/8, S, S) is brought to
(B, C/8, 4, 32, 32) by stride-2 k4 convs (none at 32³, one at 64³, two at 128³, three at 256³), then the
reference's fixed tail: two (2,4,4) convs, two (1,4,4) convs, fc(C/4+1 → C/8) with the position, fc → 1 logit.
Class-conditional (``model.num_classes`` = K > 0, HA-GAN's ``num_class`` mode): a second head fc(C/8 → K) gives class
logits, and the output is (B, 1 + K): column 0 the real/fake logit, columns 1.. the class logits (``split_logits``).

Minibatch standard deviation (``model.d_minibatch_std`` = G > 0; a stabiliser, not the reference, off in every
preset): before the last conv, one feature map is added that holds, for each contiguous group of G inputs, the mean
over features of their standard deviation across the group (ProGAN's layer, contiguous groups). A collapsed G gives
groups of fakes with near-zero spread, which D can then see. The training step feeds D ``cat([real, fake])`` with
G dividing the batch size, so a group never mixes real and fake inputs.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .layers import log2_int, lrelu, sn_conv3d, sn_linear


class SlabDiscriminator(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        ch = cfg.d_channels
        n_stem = log2_int(cfg.image_size // 32, "image size / 32")
        widths = [ch // 8 // 2 ** (n_stem - 1 - i) for i in range(n_stem)]  # …, C/32, C/16, C/8
        assert all(w >= 1 for w in widths), f"d_channels {ch} too small for image size {cfg.image_size}"
        self.stem = nn.ModuleList()
        cin = 1
        for w in widths:
            self.stem.append(sn_conv3d(cin, w, kernel_size=4, stride=2, padding=1))
            cin = w
        self.tail = nn.ModuleList(
            [
                sn_conv3d(cin, ch // 4, kernel_size=(2, 4, 4), stride=2, padding=(0, 1, 1)),  # (2, 16, 16)
                sn_conv3d(ch // 4, ch // 2, kernel_size=(2, 4, 4), stride=2, padding=(0, 1, 1)),  # (1, 8, 8)
                sn_conv3d(ch // 2, ch, kernel_size=(1, 4, 4), stride=(1, 2, 2), padding=(0, 1, 1)),  # (1, 4, 4)
                sn_conv3d(ch + (1 if cfg.d_minibatch_std else 0), ch // 4, kernel_size=(1, 4, 4), stride=1, padding=0),
            ]
        )
        self.fc1 = sn_linear(ch // 4 + 1, ch // 8)
        self.fc2 = sn_linear(ch // 8, 1)
        self.fc_class = sn_linear(ch // 8, cfg.num_classes) if cfg.num_classes else None
        self.max_position = cfg.image_size - cfg.slab_depth  # reference: S·7/8
        self.mbstd_group = cfg.d_minibatch_std

    def forward(self, x: torch.Tensor, position: int) -> torch.Tensor:
        """x (B, 1, S/8, S, S), ``position`` = first axial slice of the sub-volume → logit (B, 1) (+ K class logits)."""
        h = x
        for conv in self.stem:
            h = lrelu(conv(h))
        for i, conv in enumerate(self.tail):
            if i == len(self.tail) - 1 and self.mbstd_group:
                h = minibatch_std(h, self.mbstd_group)
            h = lrelu(conv(h))
        h = h.flatten(1)  # (B, C/4)
        pos = torch.full((h.shape[0], 1), position / self.max_position, dtype=h.dtype, device=h.device)
        h = lrelu(self.fc1(torch.cat([h, pos], dim=1)))
        if self.fc_class is None:
            return self.fc2(h)
        return torch.cat([self.fc2(h), self.fc_class(h)], dim=1)  # (B, 1 + K)


def minibatch_std(h: torch.Tensor, group: int) -> torch.Tensor:
    """h (N, C, D, H, W) → (N, C + 1, D, H, W): the extra map is the mean over (C, D, H, W) of the standard deviation
    across each contiguous group of ``group`` inputs (all N when fewer), the same value for every input of a group."""
    n = h.shape[0]
    g = min(group, n)
    if n % g:
        raise ValueError(f"model.d_minibatch_std={group}: D's batch of {n} is not a multiple of the group size")
    y = h.float().reshape(n // g, g, *h.shape[1:])
    sd = (y.var(dim=1, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3, 4))  # (N/g,)
    sd = sd.to(h.dtype).repeat_interleave(g).view(n, 1, 1, 1, 1).expand(n, 1, *h.shape[2:])
    return torch.cat([h, sd], dim=1)


def split_logits(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A discriminator output (B, 1) or (B, 1 + K) → (real/fake logit (B, 1), class logits (B, K) or None)."""
    return out[:, :1], (out[:, 1:] if out.shape[1] > 1 else None)
