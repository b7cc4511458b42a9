"""Turn a ``Scan`` into the cube the model trains on: (S, S, S) float32 in (z, y, x) order, values in [-1, 1].

Steps (all from ``cfg.data`` and ``cfg.model.image_size``):
0. Geometry: a scan whose voxel spacing is non-finite or outside ``data.spacing_range_mm``, whose orientation is
   degenerate (voxel axes not spanning 3D), or that is thinner than ``data.min_slices`` voxels or
   ``data.min_extent_mm`` along any axis is refused (``fit: resize`` would stretch a thin slab into a cube).
1. Non-finite voxels (NaN, ±Inf): replaced by the finite minimum (background). A scan with more than
   ``MAX_NONFINITE_FRACTION`` non-finite voxels is refused — that is a broken volume, not a few bad voxels.
2. Resample to isotropic ``data.spacing_mm`` (trilinear; 0 keeps the native spacing).
3. Intensity: CT in HU clipped to ``data.ct_window`` → [-1, 1]; MRI by ``data.mri_percentiles`` → [-1, 1].
4. Axis order (x, y, z) RAS → (z, y, x): axial slices first, the depth axis the generator slices into slabs.
5. Trim empty axial slices (all background) at both ends (``data.trim_empty_slices``).
6. Fit to S³: ``crop_pad`` (centre crop / pad with background -1, keeps the voxel size) or ``resize`` (trilinear,
   squeezes the volume into the cube).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from crfgan.io import Scan, ScanError

MAX_NONFINITE_FRACTION = 0.01  # above this a scan is refused instead of patched
EMPTY_LEVEL = -0.9  # after normalisation, voxels above this count as foreground
EMPTY_FRACTION = 1e-3  # an axial slice with fewer foreground voxels than this fraction is empty


def _interp(arr: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    if tuple(arr.shape) == tuple(size):
        return arr.astype(np.float32, copy=False)
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]  # (1, 1, a, b, c)
    out = F.interpolate(t, size=size, mode="trilinear", align_corners=False)
    return out[0, 0].numpy()


def check_geometry(scan: Scan, cfg) -> None:
    """Refuse implausible geometry and volumes too thin to be a 3D scan, with a reason naming the limit."""
    name, d = scan.name, cfg.data
    spacing = np.asarray(scan.spacing, dtype=np.float64)
    lo, hi = (float(v) for v in d.spacing_range_mm)
    if not np.all(np.isfinite(spacing)) or np.any(spacing < lo) or np.any(spacing > hi):
        raise ScanError(name, f"voxel spacing {[round(float(v), 6) for v in spacing]} mm is implausible (outside "
                              f"data.spacing_range_mm=[{lo:g}, {hi:g}])")
    axes = np.asarray(scan.affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(axes, axis=0)
    if not np.all(np.isfinite(axes)) or np.any(norms == 0) or \
            abs(np.linalg.det(axes / norms)) < 1e-3:  # unit voxel axes nearly coplanar: no 3D frame
        raise ScanError(name, "has a degenerate orientation (its voxel axes do not span 3D space)")
    shape = np.array(scan.shape)
    if shape.min() < d.min_slices:
        raise ScanError(name, f"is too thin for a 3D scan: {shape.tolist()} voxels, fewer than data.min_slices="
                              f"{d.min_slices} along an axis")
    extent = shape * spacing
    if extent.min() < d.min_extent_mm:
        raise ScanError(name, f"is too thin for a 3D scan: it covers {[round(float(v), 1) for v in extent]} mm, less "
                              f"than data.min_extent_mm={d.min_extent_mm:g} along an axis")


def fix_nonfinite(arr: np.ndarray, name: str = "<array>") -> np.ndarray:
    bad = ~np.isfinite(arr)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return arr
    frac = n_bad / arr.size
    if frac > MAX_NONFINITE_FRACTION:
        raise ScanError(name, f"{n_bad:,} of {arr.size:,} voxels ({frac:.1%}) are NaN/Inf, above "
                              f"{MAX_NONFINITE_FRACTION:.0%}; refused")
    arr = arr.copy()
    arr[bad] = float(arr[~bad].min())
    return arr


def resample(arr: np.ndarray, spacing, target_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Trilinear resampling of an (x, y, z) array to isotropic ``target_mm``; returns (array, new spacing)."""
    spacing = np.asarray(spacing, dtype=np.float64)
    if target_mm <= 0:
        return arr, spacing
    size = tuple(max(1, round(n * s / target_mm)) for n, s in zip(arr.shape, spacing))
    new_spacing = np.array([n * s / m for n, s, m in zip(arr.shape, spacing, size)])
    return _interp(arr, size), new_spacing


def normalise(arr: np.ndarray, modality: str, cfg, name: str = "<array>") -> np.ndarray:
    if modality == "ct":
        lo, hi = (float(v) for v in cfg.data.ct_window)
    else:
        lo, hi = (float(v) for v in np.percentile(arr, list(cfg.data.mri_percentiles)))
    if not hi > lo:
        raise ScanError(name, f"intensity range is empty ({lo:g}..{hi:g}); a constant volume cannot be normalised")
    out = (np.clip(arr, lo, hi) - lo) / (hi - lo) * 2.0 - 1.0
    return out.astype(np.float32)


def trim_empty(vol_zyx: np.ndarray, name: str = "<array>") -> np.ndarray:
    fg = (vol_zyx > EMPTY_LEVEL).reshape(vol_zyx.shape[0], -1).mean(axis=1) >= EMPTY_FRACTION  # (z,)
    idx = np.flatnonzero(fg)
    if idx.size == 0:
        raise ScanError(name, "has no foreground after intensity normalisation (every axial slice is background)")
    return vol_zyx[idx[0] : idx[-1] + 1]


def crop_pad(vol: np.ndarray, size: int, fill: float = -1.0) -> np.ndarray:
    """Centre crop or pad every axis to ``size``."""
    out = np.full((size, size, size), fill, dtype=np.float32)
    src, dst = [], []
    for n in vol.shape:
        if n >= size:
            a = (n - size) // 2
            src.append(slice(a, a + size))
            dst.append(slice(0, size))
        else:
            a = (size - n) // 2
            src.append(slice(0, n))
            dst.append(slice(a, a + n))
    out[tuple(dst)] = vol[tuple(src)]
    return out


def prepare(scan: Scan, cfg) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Like ``prepare_volume`` but also returns the cube's (z, y, x) voxel spacing in mm."""
    s = cfg.model.image_size
    check_geometry(scan, cfg)
    arr = fix_nonfinite(np.asarray(scan.array, dtype=np.float32), scan.name)  # (x, y, z)
    modality = cfg.data.modality if cfg.data.modality != "auto" else scan.modality
    arr, spacing = resample(arr, scan.spacing, cfg.data.spacing_mm)
    arr = normalise(arr, "ct" if modality == "ct" else "mri", cfg, scan.name)
    vol = np.ascontiguousarray(arr.transpose(2, 1, 0))  # (z, y, x)
    spacing_zyx = np.asarray(spacing, dtype=np.float64)[::-1].copy()
    if cfg.data.trim_empty_slices:
        vol = trim_empty(vol, scan.name)
    if cfg.data.fit == "resize":
        spacing_zyx *= np.array(vol.shape) / s  # the cube covers the same extent with S voxels per axis
        vol = _interp(vol, (s, s, s))
    else:
        vol = crop_pad(vol, s)
    vol = np.clip(vol, -1.0, 1.0).astype(np.float32)
    assert vol.shape == (s, s, s), f"prepared volume {vol.shape} != ({s}, {s}, {s})"
    return vol, tuple(float(v) for v in spacing_zyx)


def prepare_volume(scan: Scan, cfg) -> np.ndarray:
    """Scan → (S, S, S) float32 (z, y, x) in [-1, 1], S = ``cfg.model.image_size``. Raises ``ScanError``."""
    return prepare(scan, cfg)[0]
