import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.stats import wasserstein_distance

from crfgan.metrics import compute as C
from crfgan.metrics import physics as P
from crfgan.metrics.seam import seam_boundaries

WINDOW = (-1024.0, 600.0)
HU = (WINDOW[1] - WINDOW[0]) / 2  # HU per unit


def _smooth(n=4, s=32, seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    v = np.stack([gaussian_filter(rng.standard_normal((s, s, s)), 2.0) for _ in range(n)])
    return np.clip(v / v.std() * scale - 0.2, -1, 1).astype(np.float32)


def test_nn_leave_one_out_matches_brute_force_and_skips_copies():
    """evaluate's real chunks (``leave_one_out``): each volume's nearest training volume other than itself."""
    rng = np.random.default_rng(0)
    t = rng.uniform(-1, 1, (5, 8, 8, 8)).astype(np.float32)
    t[4] = t[1]  # a byte-identical copy: not a neighbour either
    d = C.chunk_stats(t[:3], train=t, leave_one_out=True)["nn"]
    for i in range(3):
        rmse = [np.sqrt(np.mean((t[i].astype(np.float64) - t[j]) ** 2)) for j in range(5)]
        others = [r for r in rmse if r > 1e-6]
        assert d[i] == pytest.approx(min(others), rel=1e-6)
    assert d[1] > 0


def test_merge_of_chunks_equals_the_whole_set():
    v = _smooth(n=4)
    train = _smooth(n=3, seed=1)
    whole = C.merge([C.chunk_stats(v, train=train)])
    parts = C.merge([C.chunk_stats(v[:1], train=train), C.chunk_stats(v[1:], train=train)])
    assert whole["n"] == parts["n"] == 4
    np.testing.assert_array_equal(whole["hist"], parts["hist"])
    assert whole["hist"].sum() == v.size
    np.testing.assert_allclose(whole["spectrum"], parts["spectrum"], rtol=1e-6)
    np.testing.assert_allclose(whole["step"], parts["step"], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(whole["jump"], parts["jump"], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(whole["nn"], P.nn_distance(v, train), rtol=1e-6)
    np.testing.assert_allclose(parts["nn"], whole["nn"], rtol=1e-6)
    assert "features" not in whole


def test_hist_w1_is_the_earth_movers_distance_of_the_bins():
    rng = np.random.default_rng(0)
    ha = rng.integers(0, 50, C.HIST_BINS).astype(np.float64)
    hb = rng.integers(0, 50, C.HIST_BINS).astype(np.float64)
    centres = np.linspace(-1, 1, C.HIST_BINS + 1)[:-1] + 1.0 / C.HIST_BINS
    ref = wasserstein_distance(centres, centres, ha, hb)
    assert C._hist_w1(ha, hb, "mri", WINDOW) == pytest.approx(ref, rel=1e-6)
    assert C._hist_w1(ha, hb, "ct", WINDOW) == pytest.approx(ref * HU, rel=1e-6)
    assert C._hist_w1(ha, ha, "ct", WINDOW) == 0.0
    shifted = np.roll(ha, 10)
    shifted[:10] = 0
    ha_cut = ha.copy()
    ha_cut[-10:] = 0
    assert C._hist_w1(ha_cut, shifted, "mri", WINDOW) == pytest.approx(10 * 2.0 / C.HIST_BINS, rel=1e-6)


def test_tissue_from_hist_counts_voxels_in_hu_bands():
    hu = np.array([-1000.0] * 3 + [-700.0] * 2 + [-100.0] * 4 + [0.0] * 6 + [500.0] * 5 + [200.0] * 7)
    x = (hu - WINDOW[0]) / (WINDOW[1] - WINDOW[0]) * 2 - 1
    h, _ = np.histogram(x, bins=C.HIST_BINS, range=(-1, 1))
    t = C.tissue_from_hist(h.astype(np.float64), WINDOW)
    n = len(hu)
    assert t == pytest.approx({"air": 3 / n, "lung": 2 / n, "fat": 4 / n, "soft_tissue": 6 / n, "bone": 5 / n})


def test_seam_from_profile_is_the_seam_over_reference_ratio():
    assert C.seam_from_profile(np.ones(64), np.ones(64), 64, None) == {}
    rng = np.random.default_rng(0)
    step, jump = rng.uniform(0.5, 1.5, 64), rng.uniform(0.5, 1.5, 64)
    seams, refs = seam_boundaries(64, 8, 4)
    s = C.seam_from_profile(step, jump, 64, (8, 4))
    assert s["seam_score"] == pytest.approx(step[seams].mean() / step[refs].mean())
    assert s["seam_grad_score"] == pytest.approx(jump[seams].mean() / jump[refs].mean())


def test_compare_is_zero_for_the_same_set_and_grows_with_a_shift():
    real = _smooth(n=4, scale=0.1)  # one peak well inside [-1, 1]: intensity_shift is unreliable on
    # histograms that fill the whole range
    assert -0.9 < real.min() and real.max() < 0.7
    r = C.merge([C.chunk_stats(real, train=real, leave_one_out=True)])
    same = C.compare(r, r, "ct", WINDOW, 0.3, 0.3, None)
    assert same["n_real"] == same["n_synthetic"] == 4
    assert same["hist_w1_hu"] == 0.0 and same["spectrum_dist"] == 0.0 and same["tissue_l1"] == 0.0
    assert same["diversity_ratio"] == pytest.approx(1.0) and same["nn_ratio"] == pytest.approx(1.0)
    assert "fd_ssl" not in same and "seam_score" not in same
    for hu in (25.0, 100.0):
        syn = np.clip(real + hu / HU, -1, 1)
        s = C.merge([C.chunk_stats(syn, train=real)])
        m = C.compare(r, s, "ct", WINDOW, 0.3, 0.3, None)
        assert m["hist_w1_hu"] == pytest.approx(hu, rel=0.05)  # a shift moves (almost) all mass by hu
        # nearest training volume: its own unshifted original
        own = np.sqrt(((syn.astype(np.float64) - real) ** 2).reshape(4, -1).mean(1)).mean()
        assert m["nn_rmse"] == pytest.approx(own, rel=1e-4) and own == pytest.approx(hu / HU, rel=0.05)
        assert m["intensity_shift_hu"] == pytest.approx(hu, abs=8)  # 4-HU bins, σ = 2 bins smoothing
    assert np.isfinite(same["quality_score"])
    mri = C.compare(r, r, "mri", WINDOW, 0.3, 0.3, None)
    assert "hist_w1" in mri and "hist_w1_hu" not in mri and "tissue_l1" not in mri


def test_diversity_needs_two_volumes():
    assert np.isnan(C.diversity(_smooth(n=1)))


def test_versus_first_ratios_only_for_ratio_metrics():
    base = {"n_real": 4, "fd_ssl": 2.0, "hist_w1_hu": 0.0, "intensity_shift_hu": -5.0, "dup_ratio": 1.0,
            "name": "x", "seam_score": 1.1}
    other = {"n_real": 8, "fd_ssl": 5.0, "hist_w1_hu": 3.0, "intensity_shift_hu": 7.0, "dup_ratio": 0.25,
             "name": "y", "seam_score": 1.5, "only_here": 1.0}
    out = C.versus_first({"a": base, "b": other})
    assert list(out) == ["a", "b"]
    assert out["b"]["fd_ssl"] == {"ratio": pytest.approx(2.5)}
    assert out["b"]["hist_w1_hu"] == {"ratio": None}  # first set at 0: no ratio
    assert out["b"]["intensity_shift_hu"] == {"difference": pytest.approx(12.0)}
    assert out["b"]["dup_ratio"] == {"difference": pytest.approx(-0.75)}
    assert out["b"]["seam_score"] == {"difference": pytest.approx(0.4)}
    assert "n_real" not in out["b"] and "name" not in out["b"] and "only_here" not in out["b"]
    assert out["a"]["fd_ssl"] == {"ratio": 1.0} and out["a"]["dup_ratio"] == {"difference": 0.0}
    for k, v in out["b"].items():
        assert ("ratio" in v) == (k in C.RATIO_METRICS)


def test_every_ratio_metric_has_an_ideal():
    assert C.RATIO_METRICS <= set(C.IDEAL)
