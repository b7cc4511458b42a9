import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from crfgan.metrics import degrade as G

HU = 812.0  # HU per unit for the default −1024…600 window


def _vols(n=4, s=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.5, 0.5, (n, s, s, s)).astype(np.float32)


def _ctx(ref=None):
    return {"hu": HU, "slab": 4, "reference": ref}


@pytest.mark.parametrize("name", list(G.SUITE))
def test_every_row_keeps_shape_and_range(name):
    v = _vols()
    f, what = G.SUITE[name]
    out = f(v, np.random.default_rng(1), _ctx(_vols(seed=9)))
    assert out.shape == v.shape and isinstance(what, str) and what
    assert np.isfinite(out).all() and out.min() >= -1.0 and out.max() <= 1.0


def test_blur_matches_scipy_and_reduces_variation():
    v = _vols()
    out = G.blur(1.0)(v, None, _ctx())
    np.testing.assert_allclose(out[0], gaussian_filter(v[0].astype(np.float64), 1.0), atol=1e-6)
    assert np.abs(np.diff(out, axis=-1)).mean() < 0.5 * np.abs(np.diff(v, axis=-1)).mean()


def test_noise_std_is_hu_over_window():
    v = np.zeros((2, 16, 16, 16), np.float32)
    out = G.noise(40.0)(v, np.random.default_rng(0), _ctx())
    assert abs(out.std() - 40.0 / HU) < 0.1 * 40.0 / HU and abs(out.mean()) < 0.01


def test_offset_shifts_by_hu_and_clips():
    v = _vols()
    out = G.offset(100.0)(v, None, _ctx())
    np.testing.assert_allclose(out - v, 100.0 / HU, atol=1e-6)
    assert G.offset(2000.0)(v, None, _ctx()).min() == 1.0  # clipped to the range


def test_down_up_is_blockwise_constant():
    v = _vols()
    out = G.down_up(4)(v, None, _ctx())
    blocks = out.reshape(4, 4, 4, 4, 4, 4, 4)
    assert np.ptp(blocks, axis=(2, 4, 6)).max() == 0
    np.testing.assert_array_equal(out[:, ::4, ::4, ::4], v[:, ::4, ::4, ::4])


def test_slab_offsets_are_constant_per_slab():
    v = _vols()
    d = G.slab_offsets(40.0)(v, np.random.default_rng(0), _ctx()).astype(np.float64) - v
    for z0 in range(0, 16, 4):
        part = d[:, z0 : z0 + 4]
        assert np.allclose(np.abs(part), 40.0 / HU, atol=1e-6)
        assert np.ptp(part.reshape(len(v), -1), axis=1).max() < 1e-6  # one sign per slab and volume


def test_slab_shift_rolls_every_other_slab():
    v = _vols()
    out = G.slab_shift(2)(v, None, _ctx())
    np.testing.assert_array_equal(out[:, 0:4], v[:, 0:4])
    np.testing.assert_array_equal(out[:, 4:8], np.roll(v[:, 4:8], 2, axis=-1))
    np.testing.assert_array_equal(out[:, 8:12], v[:, 8:12])
    assert not np.array_equal(out, v)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_distinct_leaves_k_distinct_volumes_from_the_set(k):
    v = _vols(n=6)
    out = G.distinct(k)(v, np.random.default_rng(0), _ctx())
    uniq = {o.tobytes() for o in out}
    assert len(uniq) == min(k, 6)
    assert uniq <= {x.tobytes() for x in v}


def test_pure_noise_is_uniform_and_unrelated():
    v = _vols()
    out = G.pure_noise(v, np.random.default_rng(1), _ctx())  # not _vols' stream
    assert abs(out.mean()) < 0.02 and abs(out.var() - 1 / 3) < 0.02  # U(-1, 1)
    assert abs(np.corrcoef(out.ravel(), v.ravel())[0, 1]) < 0.02


def test_memorised_returns_reference_copies():
    ref = _vols(n=6, seed=5)
    v = _vols(n=4)
    plain = G.memorised(False)(v, None, _ctx(ref))
    flipped = G.memorised(True)(v, None, _ctx(ref))
    np.testing.assert_array_equal(plain, ref[:4])
    np.testing.assert_array_equal(flipped, ref[:4, ..., ::-1])
    plain[0] += 1  # a copy, not a view
    assert not np.array_equal(plain[0], ref[0])


def test_named_rows_are_in_the_suite():
    assert set(G.SEAM_ROWS) <= set(G.SUITE) and set(G.MEMORY_ROWS) <= set(G.SUITE)
