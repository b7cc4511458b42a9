"""Controlled degradations of a set of volumes, for validating quality metrics (``crfgan bench metrics``).

Volumes are (N, D, H, W) float32 on the model scale [-1, 1]; HU amounts are converted with the CT window (the
default −1024…600 HU: 1 unit = 812 HU). Each degradation is a function ``f(vols, rng, ctx) -> vols`` where ``ctx``
holds ``hu`` (HU per unit), ``slab`` (the model's sub-volume depth along z, for seams) and ``reference`` (the
reference set, for memorised copies). They are the failure modes a metric must see: blur, noise, blocky
up-sampling, seams at the generator's sub-volume borders, an intensity offset, full and partial mode collapse, pure
noise, and copies of training volumes (plain and left-right flipped).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter


def _clip(v):
    return np.clip(v, -1.0, 1.0).astype(np.float32)


def blur(sigma: float):
    return lambda v, rng, ctx: _clip(np.stack([gaussian_filter(x.astype(np.float64), sigma) for x in v]))


def noise(hu: float):
    return lambda v, rng, ctx: _clip(v + rng.standard_normal(v.shape) * (hu / ctx["hu"]))


def down_up(factor: int):
    def f(v, rng, ctx):
        s = v[:, ::factor, ::factor, ::factor]
        u = s.repeat(factor, 1).repeat(factor, 2).repeat(factor, 3)
        return _clip(u[:, : v.shape[1], : v.shape[2], : v.shape[3]])
    return f


def offset(hu: float):
    return lambda v, rng, ctx: _clip(v + hu / ctx["hu"])


def slab_offsets(hu: float):
    """Every sub-volume (``slab`` slices along z) shifted by ±``hu`` (random sign per slab): intensity seams."""
    def f(v, rng, ctx):
        out = v.astype(np.float64).copy()
        slab = ctx["slab"]
        for i in range(len(out)):
            for z0 in range(0, out.shape[1], slab):
                out[i, z0 : z0 + slab] += rng.choice([-1.0, 1.0]) * hu / ctx["hu"]
        return _clip(out)
    return f


def slab_shift(voxels: int):
    """Every other sub-volume rolled ``voxels`` along x: geometric seams (structures jump at borders)."""
    def f(v, rng, ctx):
        out = v.copy()
        slab = ctx["slab"]
        for k, z0 in enumerate(range(0, out.shape[1], slab)):
            if k % 2:
                out[:, z0 : z0 + slab] = np.roll(out[:, z0 : z0 + slab], voxels, axis=-1)
        return out
    return f


def distinct(k: int):
    """Only ``k`` distinct volumes (each repeated): partial mode collapse; ``k = 1``: full collapse (a set of at most
    ``k`` volumes stays as it is)."""
    def f(v, rng, ctx):
        n = min(k, len(v))
        keep = rng.choice(len(v), size=n, replace=False)
        return np.stack([v[keep[i % n]] for i in range(len(v))])
    return f


def pure_noise(v, rng, ctx):
    return _clip(rng.uniform(-1.0, 1.0, v.shape))


def memorised(flip: bool):
    """Copies of the reference (training) volumes, optionally flipped left-right."""
    def f(v, rng, ctx):
        r = ctx["reference"][: len(v)]
        return np.ascontiguousarray(r[..., ::-1]) if flip else r.copy()
    return f


# name → (function, what it simulates). The rows of the degradation suite, in order.
SUITE = {
    "blur σ=1": (blur(1.0), "a generator that lost fine detail"),
    "blur σ=2": (blur(2.0), "strong blur"),
    "noise 40 HU": (noise(40.0), "extra noise"),
    "noise 80 HU": (noise(80.0), "strong noise"),
    "nearest ×4 down-up": (down_up(4), "blocky up-sampling"),
    "slab offsets ±40 HU": (slab_offsets(40.0), "intensity seams at sub-volume borders"),
    "slab shift 2 voxels": (slab_shift(2), "geometric seams at sub-volume borders"),
    "+100 HU": (offset(100.0), "intensity offset"),
    "one volume repeated": (distinct(1), "full mode collapse"),
    "4 distinct volumes": (distinct(4), "partial mode collapse"),
    "8 distinct volumes": (distinct(8), "partial mode collapse"),
    "pure noise": (pure_noise, "not an image"),
    "memorised copies": (memorised(False), "training volumes returned"),
    "memorised, flipped": (memorised(True), "training volumes returned, mirrored"),
}
SEAM_ROWS = ("slab offsets ±40 HU", "slab shift 2 voxels")
MEMORY_ROWS = ("memorised copies", "memorised, flipped")
