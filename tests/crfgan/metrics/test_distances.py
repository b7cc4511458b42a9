import numpy as np
import pytest

from crfgan.metrics.distances import frechet_distance, kid, mmd_gaussian


def _gauss(n, d, seed, shift=0.0, scale=1.0):
    return np.random.default_rng(seed).normal(shift, scale, size=(n, d))


def test_frechet_zero_on_itself_and_monotone_in_shift():
    a = _gauss(200, 8, 0)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    fds = [frechet_distance(a, a + s) for s in (0.1, 0.3, 1.0)]
    assert fds == sorted(fds) and fds[0] > 0
    assert fds[2] == pytest.approx(8 * 1.0**2, rel=1e-6)  # a pure mean shift adds |Δμ|²


def test_frechet_handles_rank_deficient_covariances():
    a, b = _gauss(5, 32, 1), _gauss(5, 32, 2)  # fewer vectors than dimensions
    d = frechet_distance(a, b)
    assert np.isfinite(d) and d > 0
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_kid_unbiased_for_one_distribution():
    vals = [kid(_gauss(50, 16, s), _gauss(50, 16, 100 + s), subsets=20, subset_size=50)[0] for s in range(30)]
    m, se = np.mean(vals), np.std(vals) / np.sqrt(len(vals))
    assert abs(m) < 3 * se, (m, se)  # zero within the standard error: no positive bias
    # a biased estimator (V-statistic) would sit clearly above zero at this sample size
    shifted = [kid(_gauss(50, 16, s), _gauss(50, 16, 100 + s, shift=0.5), subsets=20, subset_size=50)[0] for s in range(5)]
    assert min(shifted) > m + 10 * se


def test_kid_and_mmd_monotone_in_shift_and_scale():
    a = _gauss(100, 8, 0)
    b = _gauss(100, 8, 1)
    kids = [kid(a, b + s, subsets=20)[0] for s in (0.0, 0.3, 1.0)]
    mmds = [mmd_gaussian(a, b + s) for s in (0.0, 0.3, 1.0)]
    assert kids == sorted(kids) and mmds == sorted(mmds)
    assert abs(mmd_gaussian(a, b)) < 0.05 < mmds[-1]
    _, std = kid(a, b, subsets=20, subset_size=50)
    assert std > 0


def test_too_few_vectors_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2"):
        kid(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
