import json
import subprocess
import sys

import numpy as np
import pytest

from crfgan.metrics import swd as W


def _vols(n, s=16, seed=0):
    rng = np.random.default_rng(seed)
    from scipy.ndimage import gaussian_filter
    return np.stack([np.clip(gaussian_filter(rng.standard_normal((s, s, s)), 1.5) * 3, -1, 1) for _ in range(n)])


def test_pyramid_reconstructs_and_halves():
    v = _vols(2)
    pyr = W.laplacian_pyramid(v, 3)
    assert [p.shape[1:] for p in pyr] == [(16, 16, 16), (8, 8, 8), (4, 4, 4)]
    # band_l = G_l - up(G_{l+1}): adding the bands back from the low-pass gives the volume exactly
    g = pyr[-1]
    for band in reversed(pyr[:-1]):
        g = band + W._up(g, band.shape)
    np.testing.assert_allclose(g, v, atol=1e-12)


def test_same_set_scores_zero_and_other_set_does_not():
    a, b = _vols(8, seed=1), _vols(8, seed=2)
    ref = W.reference(a)
    assert W.score(ref, a)["swd"] == pytest.approx(0.0, abs=1e-9)
    other = W.score(ref, b)
    assert other["swd"] > 0
    assert W.score(ref, b + 0.3)["swd_levels"][-1] > other["swd_levels"][-1]  # an offset shows at the low-pass level


def test_dup_ratio_sees_repeats_and_memorisation_sees_flips():
    a, b = _vols(8, seed=1), _vols(8, seed=2)
    ref = W.reference(a)
    assert W.score(ref, b)["dup_ratio"] > 0.5
    rep = np.stack([b[i % 2] for i in range(8)])
    assert W.score(ref, rep)["dup_ratio"] == pytest.approx(0.0, abs=1e-6)
    assert W.score(ref, b)["memorisation_ratio"] > 0.5
    assert W.score(ref, a[..., ::-1])["memorisation_ratio"] < 0.05


def test_bad_input_is_refused_with_a_reason():
    ref = W.reference(_vols(4))
    with pytest.raises(ValueError, match="the real reference's"):
        W.score(ref, _vols(4, s=8))
    bad = _vols(4)
    bad[2, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"volumes \[2\] hold NaN"):
        W.score(ref, bad)
    with pytest.raises(ValueError, match="at least 2 volumes"):
        W.score(ref, _vols(1))


CHILD = """
import json, numpy as np, sys
sys.path.insert(0, {root!r})
from tests.crfgan.metrics.test_swd import _vols
from crfgan.metrics import swd as W
print(json.dumps(W.score(W.reference(_vols(6, seed=1)), _vols(6, seed=2))))
"""


def test_same_numbers_with_one_and_two_threads():
    from pathlib import Path
    root = str(Path(__file__).resolve().parents[3])
    out = []
    for n in ("1", "2"):
        env = {"OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "MKL_NUM_THREADS": n, "PATH": "/usr/bin:/bin"}
        r = subprocess.run([sys.executable, "-c", CHILD.format(root=root)], capture_output=True, text=True, env=env,
                           timeout=120, cwd=root)
        assert r.returncode == 0, r.stderr
        out.append(json.loads(r.stdout))
    assert out[0]["swd_levels"] == pytest.approx(out[1]["swd_levels"], rel=1e-9)
    assert out[0]["dup_ratio"] == pytest.approx(out[1]["dup_ratio"], rel=1e-9)
