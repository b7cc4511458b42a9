"""Sliced Wasserstein distance over 3D Laplacian-pyramid patches, and a within-set duplicate ratio.

The model-free fidelity measure of Karras et al. (ICLR 2018, §5: "SWD over Laplacian pyramid patches"), in 3D:

1. Each volume is decomposed into a Laplacian pyramid: band ``l`` = G_l − up(G_{l+1}) with G_0 the volume,
   G_{l+1} = the binomial-blurred G_l subsampled by 2, up = nearest ×2 then the same blur; the last level is the
   low-pass residual G_L (which keeps mean intensity: an offset in HU shows there).
2. From every level, ``patches_per_volume`` cubes of ``patch``³ voxels at positions drawn from a fixed seed.
3. Each level's descriptors are scaled by one number, the real reference's standard deviation on that level (the
   same scale for both sets: a gain, an offset or extra noise is not normalised away — the opposite of the SSL
   extractor, whose training views teach it to ignore exactly those).
4. ``directions`` fixed random unit vectors (seeded); for each, the 1D Wasserstein-1 distance between the projected
   real and synthetic descriptors, from ``quantiles`` quantiles; averaged over directions, per level.

``swd`` is the mean over levels (×100 for readability); ``swd_levels`` the per-level values (fine to coarse: blur,
noise and down-up sampling show at the fine levels, intensity shifts at the coarse one).

``dup_ratio``: the mean distance from each synthetic volume to its nearest *other* synthetic volume, divided by the
same on real volumes (on the pyramid's low-pass level, equal set sizes): ≈1 for a diverse set, 0 when volumes are
copies of each other (full or partial mode collapse). MS-SSIM diversity averages over pairs, so a set of 4 distinct
volumes repeated 8 times reads as diverse there; a nearest-neighbour distance does not.

Everything is numpy/scipy in float64 with seeded positions and directions: the same volumes give the same numbers
with any thread count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import convolve1d

_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


@dataclass(frozen=True)
class SWDParams:
    levels: int = 4              # pyramid levels including the low-pass residual
    patch: int = 4               # patch side in voxels
    patches_per_volume: int = 256
    directions: int = 64
    quantiles: int = 256
    seed: int = 0


def _blur(x: np.ndarray) -> np.ndarray:
    for ax in range(-3, 0):
        x = convolve1d(x, _BINOMIAL, axis=ax, mode="reflect")
    return x


def _down(x: np.ndarray) -> np.ndarray:
    return _blur(x)[..., ::2, ::2, ::2]


def _up(x: np.ndarray, shape) -> np.ndarray:
    u = x.repeat(2, -3).repeat(2, -2).repeat(2, -1)
    u = u[..., : shape[-3], : shape[-2], : shape[-1]]
    return _blur(u)


def laplacian_pyramid(volumes, levels: int = 4, min_side: int = 4) -> list[np.ndarray]:
    """(N, D, H, W) → [band_0 (finest), …, band_{L−2}, low-pass G_{L−1}]; each level half the previous side, and
    fewer levels where the next would be smaller than ``min_side`` voxels (a patch)."""
    g = np.asarray(volumes, dtype=np.float64)
    if g.ndim == 3:
        g = g[None]
    if g.ndim != 4:
        raise ValueError(f"volumes must be (N, D, H, W), got shape {g.shape}")
    out = []
    for _ in range(levels - 1):
        if (min(g.shape[1:]) + 1) // 2 < min_side:
            break
        low = _down(g)
        out.append(g - _up(low, g.shape))
        g = low
    out.append(g)
    return out


def _patch_positions(shape, patch: int, n: int, rng: np.random.Generator) -> np.ndarray:
    hi = np.array(shape) - patch + 1
    if (hi < 1).any():
        raise ValueError(f"a level of shape {tuple(shape)} is smaller than the {patch}³ patch")
    total = int(np.prod(hi))
    if total <= n:  # every position
        return np.stack(np.unravel_index(np.arange(total), hi), axis=1)
    return np.stack([rng.integers(0, h, size=n) for h in hi], axis=1)


def patches(level: np.ndarray, patch: int, per_volume: int, seed: int) -> np.ndarray:
    """(N * per_volume, patch³) descriptors from seeded positions (the same positions for every set)."""
    rng = np.random.default_rng(seed)
    pos = _patch_positions(level.shape[1:], patch, per_volume, rng)
    o = np.arange(patch)
    dz, dy, dx = np.meshgrid(o, o, o, indexing="ij")
    iz = pos[:, 0, None] + dz.ravel()
    iy = pos[:, 1, None] + dy.ravel()
    ix = pos[:, 2, None] + dx.ravel()
    return level[:, iz, iy, ix].reshape(-1, patch**3)


def directions(dim: int, n: int, seed: int) -> np.ndarray:
    d = np.random.default_rng(seed + 7919).standard_normal((dim, n))
    return d / np.linalg.norm(d, axis=0, keepdims=True)


def _level_quantiles(desc: np.ndarray, dirs: np.ndarray, q: int) -> np.ndarray:
    proj = desc @ dirs  # (M, directions)
    return np.quantile(proj, (np.arange(q) + 0.5) / q, axis=0)  # (q, directions)


def _check(volumes, name: str) -> np.ndarray:
    v = np.asarray(volumes, dtype=np.float64)
    if v.ndim == 3:
        v = v[None]
    if v.ndim != 4:
        raise ValueError(f"{name}: volumes must be (N, D, H, W), got array shape {v.shape}")
    if not np.isfinite(v).all():
        bad = sorted({int(i) for i in np.flatnonzero(~np.isfinite(v).reshape(len(v), -1).all(axis=1))})
        raise ValueError(f"{name}: volumes {bad[:8]} hold NaN or Inf values")
    return v


def describe(volumes, params: SWDParams = SWDParams(), name: str = "volumes") -> dict:
    """Per-chunk descriptors: ``{"shape", "levels": [(N·patches, patch³) per level], "low": (N, d, h, w)}``;
    chunks of one set are joined with ``merge_descriptors`` (positions are the same for every volume)."""
    v = _check(volumes, name)
    pyr = laplacian_pyramid(v, params.levels, params.patch)
    flip = np.ascontiguousarray(v[..., ::-1])
    for _ in range(len(pyr) - 1):  # the mirror image's own low-pass (subsampling phase differs from a flipped one)
        flip = _down(flip)
    return {"shape": tuple(v.shape[1:]), "n": len(v), "low": pyr[-1], "low_flip": flip,
            "levels": [patches(lev, params.patch, params.patches_per_volume, params.seed + li)
                       for li, lev in enumerate(pyr)]}


def merge_descriptors(chunks: list[dict]) -> dict:
    return {"shape": chunks[0]["shape"], "n": sum(c["n"] for c in chunks),
            "low": np.concatenate([c["low"] for c in chunks]),
            "low_flip": np.concatenate([c["low_flip"] for c in chunks]),
            "levels": [np.concatenate([c["levels"][li] for c in chunks]) for li in range(len(chunks[0]["levels"]))]}


@dataclass
class Reference:
    """The real set's side: per-level scale and projected quantiles, and its low-pass volumes (duplicates,
    memorisation). Plain arrays (``to_arrays``/``from_arrays``): cheap to ship to a training worker."""
    params: SWDParams
    shape: tuple
    scales: list            # per level
    quantiles: list         # per level: (quantiles, directions)
    low: np.ndarray         # (N, d, h, w): the real volumes' low-pass level
    low_flip: np.ndarray    # the same of their left-right mirror images

    def to_arrays(self) -> dict:
        p = self.params
        return {"shape": np.asarray(self.shape), "scales": np.asarray(self.scales),
                "quantiles": np.stack(self.quantiles), "low": self.low, "low_flip": self.low_flip,
                "params": np.asarray([p.levels, p.patch, p.patches_per_volume, p.directions, p.quantiles, p.seed])}

    @classmethod
    def from_arrays(cls, a: dict) -> Reference:
        p = SWDParams(*(int(v) for v in a["params"]))
        return cls(p, tuple(int(v) for v in a["shape"]), list(a["scales"]), list(a["quantiles"]), a["low"],
                   a["low_flip"])


def reference_from(desc: dict, params: SWDParams = SWDParams()) -> Reference:
    if desc["n"] < 2:
        raise ValueError(f"the real set needs at least 2 volumes, it has {desc['n']}")
    scales, qs = [], []
    for li, d in enumerate(desc["levels"]):
        s = float(d.std()) or 1.0
        scales.append(s)
        qs.append(_level_quantiles(d / s, directions(d.shape[1], params.directions, params.seed + li),
                                   params.quantiles))
    return Reference(params, tuple(desc["shape"]), scales, qs, desc["low"], desc["low_flip"])


def describe_chunked(volumes, params: SWDParams = SWDParams(), name: str = "volumes", chunk: int = 4) -> dict:
    """``describe`` a few volumes at a time (the float64 pyramid of a whole 256³ set would not fit)."""
    v = np.asarray(volumes)
    if v.ndim == 3:
        v = v[None]
    return merge_descriptors([describe(v[i : i + chunk], params, name) for i in range(0, max(len(v), 1), chunk)])


def reference(real, params: SWDParams = SWDParams()) -> Reference:
    return reference_from(describe_chunked(real, params, "real set"), params)


def _nn(x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    """Per row of x: RMS distance to the nearest row of y (of x itself, excluding the row, when y is None)."""
    same = y is None
    y = x if same else y
    d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
    if same:
        np.fill_diagonal(d, np.inf)
    return np.sqrt(np.clip(d.min(axis=1), 0, None) / x.shape[1])


def dup_ratio_from(low_syn: np.ndarray, low_real: np.ndarray) -> float:
    """Nearest-other-volume distance of the synthetic set over the real set's, at equal set sizes (the smaller)."""
    n = min(len(low_syn), len(low_real))
    if n < 2:
        return float("nan")
    real_nn = float(_nn(low_real[:n].reshape(n, -1)).mean())
    return float(_nn(low_syn[:n].reshape(n, -1)).mean()) / real_nn if real_nn > 0 else float("nan")


def memorisation_ratio(low_syn: np.ndarray, low_train: np.ndarray, low_train_flip: np.ndarray) -> float:
    """Mean distance from each synthetic volume to its nearest training volume *or its left-right mirror image*,
    over the training set's own nearest-other-volume distance: ≈1 or more for new volumes, → 0 for copies (plain
    or flipped). On the low-pass level, so blur does not read as memorisation."""
    n = len(low_train)
    if n < 2:
        return float("nan")
    t = low_train.reshape(n, -1)
    both = np.concatenate([t, low_train_flip.reshape(n, -1)])
    own = float(_nn(t).mean())
    return float(_nn(low_syn.reshape(len(low_syn), -1), both).mean()) / own if own > 0 else float("nan")


def score_from(ref: Reference, desc: dict) -> dict:
    """``{"swd", "swd_levels", "dup_ratio", "memorisation_ratio"}`` of described synthetic volumes."""
    if tuple(desc["shape"]) != tuple(ref.shape):
        raise ValueError(f"synthetic volumes are {tuple(desc['shape'])}, the real reference's {tuple(ref.shape)}")
    if desc["n"] < 2:
        raise ValueError(f"the synthetic set needs at least 2 volumes, it has {desc['n']}")
    p = ref.params
    per = []
    for li, d in enumerate(desc["levels"]):
        q = _level_quantiles(d / ref.scales[li], directions(d.shape[1], p.directions, p.seed + li), p.quantiles)
        per.append(float(np.abs(q - ref.quantiles[li]).mean()) * 100)
    return {"swd": float(np.mean(per)), "swd_levels": per, "dup_ratio": dup_ratio_from(desc["low"], ref.low),
            "memorisation_ratio": memorisation_ratio(desc["low"], ref.low, ref.low_flip)}


def score(ref: Reference, synthetic) -> dict:
    return score_from(ref, describe_chunked(synthetic, ref.params, "synthetic set"))
