"""Seam score: discontinuity across the depths where separately rendered sub-volumes meet, phase-matched.

G^H renders the volume as sub-volumes of ``S/8`` axial slices (training) or halo tiles (synthesis); a generator
whose sub-volumes disagree leaves a step at their borders. For each depth boundary ``b`` (between slices b−1 and
b) two statistics, averaged over volumes and the axial plane:

- intensity step    ``|x[b] − x[b−1]|``
- gradient jump     ``|(x[b] − x[b−1]) − ½((x[b−1] − x[b−2]) + (x[b+1] − x[b]))|`` (a kink in the profile)

The score is the mean at seam boundaries (multiples of ``border_period``) divided by the mean at the other
boundaries *of the same phase* of the generator's upsampling grid (``grid`` = S/E, the ×2/×4 nearest
upsamplings): nearest upsampling makes every phase-0 boundary differ from the others even without any seam, so
comparing against all depths would move the score by itself. 1.0 means no seam; above 1 a seam. Needs at least
one non-seam boundary of the seams' phase: at 32³ (sub-volume = 4 slices = one ×4 period) there is none, so
64³ or more.
"""

from __future__ import annotations

import numpy as np


def boundary_profiles(volumes) -> tuple[np.ndarray, np.ndarray]:
    """(step, jump) per boundary b = 0 … D−1 (b = 0 and, for the jump, b = 1 and D−1 are NaN)."""
    x = np.asarray(volumes, dtype=np.float64)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"volumes must be (N, D, H, W), got shape {x.shape}")
    d = np.diff(x, axis=1)  # d[:, b-1] = x[b] - x[b-1]
    depth = x.shape[1]
    step = np.full(depth, np.nan)
    step[1:] = np.abs(d).mean(axis=(0, 2, 3))
    jump = np.full(depth, np.nan)
    if depth >= 4:
        # boundary b in 2 … D-2: d[b-1] against the mean of its neighbours d[b-2], d[b]
        jump[2 : depth - 1] = np.abs(d[:, 1:-1] - 0.5 * (d[:, :-2] + d[:, 2:])).mean(axis=(0, 2, 3))
    return step, jump


def seam_boundaries(depth: int, border_period: int, grid: int) -> tuple[list[int], list[int]]:
    """(seam boundaries, reference boundaries of the same phase mod ``grid``), both inside 2 … D−2."""
    if border_period < 1 or grid < 1:
        raise ValueError(f"border_period and grid must be >= 1, got {border_period}, {grid}")
    inner = range(2, depth - 1)
    seams = [b for b in inner if b % border_period == 0]
    phases = {b % grid for b in seams}
    refs = [b for b in inner if b % border_period != 0 and b % grid in phases]
    return seams, refs


def seam_score(volumes, border_period: int, grid: int) -> dict:
    """``{"seam_score", "seam_grad_score", "seams", "refs", "step", "jump"}``; scores are seam / same-phase means."""
    x = np.asarray(volumes)
    depth = x.shape[-3]
    seams, refs = seam_boundaries(depth, border_period, grid)
    if not seams or not refs:
        raise ValueError(f"seam score at depth {depth} with sub-volumes of {border_period} slices and a ×{grid} "
                         f"upsampling grid has {len(seams)} seam and {len(refs)} same-phase reference boundaries; it "
                         "needs at least one of each (use 64³ or more)")
    step, jump = boundary_profiles(x)
    ratio = lambda p: float(np.mean(p[seams]) / max(np.mean(p[refs]), 1e-12))  # noqa: E731
    return {"seam_score": ratio(step), "seam_grad_score": ratio(jump), "seams": seams, "refs": refs,
            "step": step.tolist(), "jump": jump.tolist()}


def model_seam_geometry(model_cfg) -> tuple[int, int]:
    """(border_period, grid) for a model config: sub-volumes of S/8 slices, upsampling grid S/E."""
    return model_cfg.slab_depth, model_cfg.image_size // model_cfg.emb_size
