"""crfgan.volume: the cube the model trains on, from synthetic scans with known answers and the real ones."""

from __future__ import annotations

import numpy as np
import pytest

from crfgan.config import load_config
from crfgan.io import Scan, ScanError, load_scan
from crfgan.volume import crop_pad, prepare, prepare_volume, resample
from tests.crfgan.test_io import CT, FLAIR, needs_data


def scan(arr, spacing=(1.0, 1.0, 1.0), modality="ct"):
    return Scan(np.asarray(arr, np.float32), np.array(spacing), np.eye(4), "synthetic", modality, {})


def cfg(*overrides):
    return load_config("tiny", list(overrides))


@needs_data
@pytest.mark.parametrize("path, fit", [(CT, "resize"), (CT, "crop_pad"), (FLAIR, "resize"), (FLAIR, "crop_pad")])
def test_real_scans_to_cube(path, fit):
    v = prepare_volume(load_scan(path), cfg(f"data.fit={fit}"))
    assert v.shape == (32, 32, 32) and v.dtype == np.float32
    assert v.min() >= -1.0 and v.max() <= 1.0 and v.max() > 0.0
    assert np.array_equal(v, prepare_volume(load_scan(path), cfg(f"data.fit={fit}")))  # deterministic


def test_ct_window_maps_hu_to_unit_range():
    a = np.full((32, 32, 32), -212.0, np.float32)  # centre of [-1024, 600] → 0
    a[:, :, :4] = 600.0
    a[:, :, -4:] = 3000.0  # clipped to +1
    a[:4] = -2000.0  # clipped to -1
    v = prepare_volume(scan(a), cfg("data.fit=crop_pad", "data.trim_empty_slices=false"))
    assert v[16, 16, 16] == pytest.approx(0.0, abs=1e-6)
    assert v[-1, 16, 16] == pytest.approx(1.0) and v[0, 16, 16] == pytest.approx(1.0)  # z index ↔ input z
    assert v[16, 16, 0] == -1.0 and v.min() == -1.0  # x < 4 set to -2000 HU


def test_mri_percentiles():
    a = np.arange(32**3, dtype=np.float32).reshape(32, 32, 32)
    v, _ = prepare(scan(a, modality="mri"), cfg("data.fit=crop_pad", "data.trim_empty_slices=false"))
    lo, hi = np.percentile(a, [0.5, 99.5])
    expect = (np.clip(a, lo, hi) - lo) / (hi - lo) * 2 - 1
    assert np.allclose(v, expect.transpose(2, 1, 0), atol=1e-6)


def test_axis_order_is_zyx():
    a = np.full((32, 32, 32), -1024.0, np.float32)
    a[3, 20, 30] = 600.0  # x=3, y=20, z=30
    v = prepare_volume(scan(a), cfg("data.fit=crop_pad", "data.trim_empty_slices=false"))
    assert np.unravel_index(np.argmax(v), v.shape) == (30, 20, 3)


def test_nan_inf_replaced_or_refused():
    a = np.random.default_rng(0).uniform(-1000, 500, size=(32, 32, 32)).astype(np.float32)
    a[0, 0, :10] = np.nan
    a[1, 1, :5] = np.inf
    v = prepare_volume(scan(a), cfg())
    assert np.isfinite(v).all()
    a[:8] = np.nan  # 25 % of the voxels
    with pytest.raises(ScanError, match=r"8,192 of 32,768 voxels \(25.0%\) are NaN/Inf"):
        prepare_volume(scan(a), cfg())


def test_trim_empty_slices_and_spacing():
    a = np.full((32, 32, 64), -1024.0, np.float32)
    a[:, :, 10:26] = 0.0  # 16 non-empty axial slices
    v, sp = prepare(scan(a, (1.0, 1.0, 2.0)), cfg("data.fit=crop_pad"))
    filled = np.flatnonzero((v > -0.9).any(axis=(1, 2)))
    assert (filled[0], filled[-1]) == (8, 23)  # 16 slices centred in 32
    assert sp == (2.0, 1.0, 1.0)
    v, sp = prepare(scan(a, (1.0, 1.0, 2.0)), cfg("data.fit=resize"))
    assert (v > -0.9).all() and sp == pytest.approx((1.0, 1.0, 1.0))  # 16 slices of 2 mm squeezed to 32


def test_constant_and_empty_volumes_refused():
    with pytest.raises(ScanError, match="no foreground"):
        prepare_volume(scan(np.full((32, 32, 32), -1024.0)), cfg())
    with pytest.raises(ScanError, match="constant volume"):
        prepare_volume(scan(np.full((32, 32, 32), 7.0), modality="mri"), cfg())


def test_resample_to_spacing():
    a = np.zeros((30, 30, 20), np.float32)
    r, sp = resample(a, (1.0, 1.0, 3.0), 2.0)
    assert r.shape == (15, 15, 30) and np.allclose(sp, 2.0)


@pytest.mark.parametrize("shape", [(10, 40, 32), (32, 32, 32), (50, 5, 33)])
def test_crop_pad(shape):
    v = np.ones(shape, np.float32)
    out = crop_pad(v, 32, fill=0.0)
    assert out.shape == (32, 32, 32)
    assert out.sum() == np.prod([min(n, 32) for n in shape])


def _body(shape):
    a = np.full(shape, -1024.0, np.float32)
    a[tuple(slice(n // 4, n - n // 4) for n in shape)] = 40.0
    return a


@pytest.mark.parametrize("shape, spacing, message", [
    ((64, 64, 3), (1.0, 1.0, 1.0), r"\[64, 64, 3\] voxels, fewer than data.min_slices=16"),  # a 3-slice series
    ((64, 64, 12), (1.0, 1.0, 5.0), r"fewer than data.min_slices=16"),  # 12 thick slices
    ((64, 64, 20), (1.0, 1.0, 1.0), r"covers \[64.0, 64.0, 20.0\] mm, less than data.min_extent_mm=30"),
])
def test_volumes_too_thin_for_3d_are_refused_not_stretched(shape, spacing, message):
    with pytest.raises(ScanError, match=message):
        prepare(scan(_body(shape), spacing), cfg("data.fit=resize"))


def test_minimum_extent_is_configurable():
    v, _ = prepare(scan(_body((64, 64, 12)), (1.0, 1.0, 5.0)), cfg("data.min_slices=8"))
    assert v.shape == (32, 32, 32)


@pytest.mark.parametrize("spacing", [(0.0, 1.0, 1.0), (-1.0, 1.0, 1.0), (float("nan"), 1.0, 1.0),
                                     (float("inf"), 1.0, 1.0), (1.0, 1.0, 0.01), (1.0, 1.0, 80.0)])
def test_implausible_spacing_is_refused(spacing):
    with pytest.raises(ScanError, match=r"voxel spacing .* is implausible \(outside data.spacing_range_mm=\[0.05, 50\]\)"):
        prepare(scan(_body((32, 32, 32)), spacing), cfg())


def test_degenerate_orientation_is_refused():
    s = scan(_body((32, 32, 32)))
    s.affine = np.array([[1.0, 1.0, 0, 0], [0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1]])  # x and y axes coincide
    with pytest.raises(ScanError, match="degenerate orientation"):
        prepare(s, cfg())
