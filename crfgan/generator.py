"""CRF-GAN / HA-GAN generator: G^A (embedding generator) and G^H (slab renderer).

Follows the reference code (mahshid1998/CRF-GAN ``models/CRF_GAN_{64,128,256}.py``, itself HA-GAN's
``Generator``) with widths from the config, so ``base_channels=32`` reproduces its parameters exactly.

    z (B, L) ─G^A─► A (B, Ce, E, E, E)      E = S/4 (or S/8), Ce = 2c
    A[:, :, k:k+e] ─G^H─► x (B, 1, S/8, S, S)   e = embedding slices per sub-volume

One difference from the reference: sub-volume positions are whole embedding slices, so the rendered
sub-volume and the real one cover exactly the same axial slices (the reference's ``crop_idx // 4`` could be
off by up to 3 slices).

Conditional generation (``model.num_classes`` = K > 0), as HA-GAN's ``num_class`` mode: the class enters as a
one-hot vector concatenated to z before G^A's first Linear (latent_dim + K inputs); G^H is not conditioned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig
from .layers import apply_group_norm, fusable, group_norm, log2_int, phase_kernels, up2_conv
from .render import render_one_pass, render_tiled


class EmbeddingGenerator(nn.Module):
    """G^A: z → A, the mid-level embedding of the whole volume.

    Linear → 16c×4³, then five Conv3d(k3)+GroupNorm+ReLU blocks with widths 16c,16c,8c,4c,2c→Ce; nearest ×2
    upsampling before as many blocks as needed to reach E (before blocks 2..4 at 128³, 2..5 at 256³).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c, e = cfg.base_channels, cfg.emb_size
        self.base = 16 * c
        self.num_classes = cfg.num_classes
        self.fc = nn.Linear(cfg.latent_dim + cfg.num_classes, 4 * 4 * 4 * self.base)
        widths = [16 * c, 16 * c, 8 * c, 4 * c, cfg.emb_channels]
        n_up = log2_int(e // 4, "embedding size / 4")
        assert n_up <= 5, f"embedding size {e} needs {n_up} upsamplings; at most 5 are supported"
        # Upsample before blocks 1..n_up (1-based, skipping block 0) as in the reference; a 5th goes before block 0.
        self.up_before = [i in range(1, n_up + 1) for i in range(5)] if n_up <= 4 else [True] * 5
        cin = self.base
        self.blocks = nn.ModuleList()
        for w in widths:
            self.blocks.append(nn.Sequential(nn.Conv3d(cin, w, 3, padding=1), group_norm(w), nn.ReLU()))
            cin = w
        self.activation_checkpointing = cfg.activation_checkpointing
        self.fused_upsample = cfg.fused_upsample

    def _block(self, i: int, h: torch.Tensor, kernels: torch.Tensor | None = None) -> torch.Tensor:
        conv, rest = self.blocks[i][0], self.blocks[i][1:]
        return rest(up2_conv(conv, h, self.fused_upsample, kernels) if self.up_before[i] else conv(h))

    def forward(self, z: torch.Tensor, class_index: torch.Tensor | None = None) -> torch.Tensor:
        h = self.fc(with_class(z, class_index, self.num_classes)).view(z.shape[0], self.base, 4, 4, 4)  # (B, 16c, 4³)
        for i in range(len(self.blocks)):
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                conv = self.blocks[i][0]  # the fused kernels outside the recomputed region (see up2_conv)
                k = phase_kernels(conv.weight) if self.up_before[i] and self.fused_upsample and fusable(conv) else None
                h = checkpoint(self._block, i, h, k, use_reentrant=False)
            else:
                h = self._block(i, h)
        return h  # (B, Ce, E, E, E)


def with_class(z: torch.Tensor, class_index: torch.Tensor | None, num_classes: int) -> torch.Tensor:
    """z (B, L) → (B, L + K) with the one-hot class appended (K = 0: z unchanged)."""
    if num_classes == 0:
        if class_index is not None:
            raise ValueError("class_index given, but this generator is unconditional (model.num_classes=0)")
        return z
    if class_index is None:
        raise ValueError(f"this generator is class-conditional (model.num_classes={num_classes}): pass class_index")
    class_index = torch.as_tensor(class_index).long().reshape(-1)
    if class_index.shape[0] != z.shape[0]:
        raise ValueError(f"class_index has {class_index.shape[0]} entries for a batch of {z.shape[0]}")
    # range check on host tensors only: on a GPU it would synchronise every training step
    if class_index.device.type == "cpu" and class_index.numel() and (
            int(class_index.min()) < 0 or int(class_index.max()) >= num_classes):
        raise ValueError(f"class_index must lie in [0, {num_classes}), got {class_index.tolist()}")
    return torch.cat([z, F.one_hot(class_index.to(z.device), num_classes).to(z.dtype)], dim=1)


class SlabRenderer(nn.Module):
    """G^H: a depth slab of A → the sub-volume at full resolution.

    log2(S/E) stages of ×2 nearest upsampling + Conv3d(k3); every stage but the last has GroupNorm + ReLU, the
    last maps to one channel with tanh. At E = S/4: Ce→c→1 (the reference's tp_conv6/tp_conv7).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n = log2_int(cfg.image_size // cfg.emb_size, "image size / embedding size")
        widths = [max(cfg.base_channels // 2**i, 4) for i in range(n - 1)] + [1]
        cin = cfg.emb_channels
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for i, w in enumerate(widths):
            self.convs.append(nn.Conv3d(cin, w, 3, padding=1))
            if i < n - 1:
                self.norms.append(group_norm(w))
            cin = w
        self.fused_upsample = cfg.fused_upsample

    def stage(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Stage ``i``'s nearest ×2 upsampling and conv (``crfgan.layers.up2_conv``), before its norm."""
        return up2_conv(self.convs[i], h, self.fused_upsample)

    def forward(self, a: torch.Tensor, norm_stats: list | None = None) -> torch.Tensor:
        """Render ``a`` (B, Ce, e, E, E) → (B, 1, e·S/E, S, S).

        ``norm_stats``: optional per-GroupNorm ``(mean, var)`` of shape (B, groups) to use instead of the
        statistics of this input (the tiled renderer passes whole-volume statistics).
        """
        h = a
        for i in range(len(self.convs)):
            h = self.stage(i, h)
            if i < len(self.norms):
                stats = norm_stats[i] if norm_stats is not None else None
                h = F.relu(apply_group_norm(self.norms[i], h, stats))
        return torch.tanh(h)


class Generator(nn.Module):
    """G = (G^A, G^H). ``forward(z, slab_index)`` renders one sub-volume during training."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = EmbeddingGenerator(cfg)
        self.renderer = SlabRenderer(cfg)

    def slab_of(self, a: torch.Tensor, start: int) -> torch.Tensor:
        e = self.cfg.emb_slab_depth
        assert 0 <= start and start + e <= a.shape[2], f"sub-volume start {start} + {e} outside A of depth {a.shape[2]}"
        return a[:, :, start : start + e]  # (B, Ce, e, E, E)

    def forward(self, z: torch.Tensor, start: int, class_index: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """z (B, L) → (sub-volume (B, 1, S/8, S, S) whose first axial slice is start·S/E, A (B, Ce, E, E, E)).

        ``class_index`` (B,) long: required when the generator is class-conditional, refused otherwise."""
        a = self.embedding(z, class_index)
        return self.renderer(self.slab_of(a, start)), a

    def class_index(self, names) -> torch.Tensor:
        """Class names → a LongTensor of indices into ``model.class_names``; an unknown name lists the valid ones."""
        valid = list(self.cfg.class_names)
        if not valid:
            raise ValueError("this generator has no classes (model.num_classes=0 or no model.class_names)")
        bad = [n for n in names if n not in valid]
        if bad:
            raise ValueError(f"unknown class {bad[0]!r}; valid classes: {', '.join(valid)}")
        return torch.tensor([valid.index(n) for n in names], dtype=torch.long)

    @torch.no_grad()
    def render(self, z: torch.Tensor, class_index: torch.Tensor | None = None, tiled: bool = True,
               **tile_kwargs) -> torch.Tensor:
        """z (B, L) → whole volume (B, 1, S, S, S) in [-1, 1]; see ``crfgan.render``.

        ``norm_stats="train"`` renders every sub-volume as training does (E/8 embedding slices, no halo, its own
        GroupNorm statistics): ``slab`` and ``halo`` are then fixed by the model."""
        a = self.embedding(z, class_index)
        if tile_kwargs.get("norm_stats") == "train":
            tiled = True
            tile_kwargs.update(slab=self.cfg.emb_slab_depth, halo=0)
        return render_tiled(self.renderer, a, **tile_kwargs) if tiled else render_one_pass(self.renderer, a)
