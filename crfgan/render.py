"""Whole-volume rendering of the embedding A by G^H: one pass, or halo-tiled in bounded memory.

The reference renders A in one pass (several GB at 256³). Tiling renders ``slab`` embedding slices at a time
with ``halo`` extra slices on each side, crops the halo and stitches. G^H's receptive field is under one
embedding slice (two ×2 upsamplings and k3 convs: ½ + ¼ slice), so ``halo=1`` makes every kept voxel exact.

The catch is G^H's GroupNorm, whose statistics span its whole input:
- ``norm_stats="global"`` first streams over the tiles once per GroupNorm layer, accumulating per-(batch, group)
  sums and sums of squares of the kept voxels in float64, then normalises every tile with those whole-volume
  statistics: the result equals the one-pass render (to float32 rounding).
- ``norm_stats="train"`` is the exact training condition: tiles of E/8 embedding slices (one sub-volume), no
  halo, each normalised with its own statistics — what G^H sees in every training step (the caller passes
  ``slab`` = E/8 and ``halo=0``; ``Generator.render`` does). Seams may appear at sub-volume borders.
- ``norm_stats="slab"`` normalises each tile (``slab`` + halo, E/16 + 1 + 1 slices by default) with its own
  statistics. That is *not* what training sees (E/8 slices, no halo); it is kept for comparison.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .layers import apply_group_norm

if TYPE_CHECKING:  # annotations only: render.py never imports generator.py at run time (generator imports us)
    from .generator import SlabRenderer


def default_slab(depth: int) -> int:
    """Tile size when none is given: 1/16 of the embedding depth (2 slices at 128³, 4 at 256³, 8 at 512³)."""
    return max(1, depth // 16)


def render_one_pass(renderer: SlabRenderer, a: torch.Tensor) -> torch.Tensor:
    """A (B, Ce, E, E, E) → (B, 1, S, S, S), as the reference does it."""
    return renderer(a)


def tiles(depth: int, slab: int, halo: int):
    """Yield ``(t0, t1, h0, h1)``: the kept embedding slices [t0, t1) and the read ones [h0, h1) with halo."""
    for t0 in range(0, depth, slab):
        t1 = min(t0 + slab, depth)
        yield t0, t1, max(t0 - halo, 0), min(t1 + halo, depth)


def _pre_norm(renderer: SlabRenderer, a: torch.Tensor, layer: int, stats: list) -> torch.Tensor:
    """Run G^H up to conv ``layer`` (inclusive) and return its output before that layer's GroupNorm."""
    h = a
    for i in range(layer + 1):
        h = renderer.stage(i, h)
        if i < layer:
            h = F.relu(apply_group_norm(renderer.norms[i], h, stats[i]))
    return h


@torch.no_grad()
def global_norm_stats(renderer: SlabRenderer, a: torch.Tensor, slab: int, halo: int) -> list:
    """Whole-volume GroupNorm ``(mean, var)`` per layer, streamed over tiles (sums in float64)."""
    stats: list = []
    b = a.shape[0]
    for layer, gn in enumerate(renderer.norms):
        f = 2 ** (layer + 1)  # depth scale of this layer's output relative to A
        total = torch.zeros(b, gn.num_groups, dtype=torch.float64, device=a.device)
        total_sq = torch.zeros_like(total)
        count = 0
        for t0, t1, h0, _h1 in tiles(a.shape[2], slab, halo):
            h = _pre_norm(renderer, a[:, :, h0:_h1], layer, stats)
            kept = h[:, :, (t0 - h0) * f : (t1 - h0) * f].double()  # (B, C, kept depth, H, W)
            kept = kept.reshape(b, gn.num_groups, -1)
            total += kept.sum(dim=2)
            total_sq += (kept * kept).sum(dim=2)
            count += kept.shape[2]
        mean = total / count
        var = (total_sq / count - mean * mean).clamp_min(0)
        stats.append((mean.float(), var.float()))
    return stats


@torch.no_grad()
def render_tiled(
    renderer: SlabRenderer,
    a: torch.Tensor,
    slab: int = 0,
    halo: int = 1,
    norm_stats: str = "global",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """A (B, Ce, E, E, E) → (B, 1, S, S, S), rendering ``slab`` embedding slices (+ ``halo``) at a time
    (``slab=0``: ``default_slab``).

    Peak memory beyond A and the output is one tile's activations. ``out`` may be a preallocated tensor
    (e.g. a memory-mapped array) to write into.
    """
    assert norm_stats in ("global", "train", "slab"), f"norm_stats must be global, train or slab, got {norm_stats!r}"
    b, _, depth, eh, ew = a.shape
    slab = slab or default_slab(depth)
    assert slab >= 1 and halo >= 0, f"slab must be >= 1 and halo >= 0, got {slab}, {halo}"
    assert norm_stats != "train" or halo == 0, "norm_stats='train' renders the sub-volumes as training does: halo=0"
    f = 2 ** len(renderer.convs)  # S / E
    if out is None:
        out = torch.empty(b, 1, depth * f, eh * f, ew * f, dtype=a.dtype, device=a.device)
    stats = global_norm_stats(renderer, a, slab, halo) if norm_stats == "global" else None
    for t0, t1, h0, h1 in tiles(depth, slab, halo):
        y = renderer(a[:, :, h0:h1], norm_stats=stats)
        out[:, :, t0 * f : t1 * f] = y[:, :, (t0 - h0) * f : (t1 - h0) * f]
    return out
