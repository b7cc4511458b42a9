import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crfgan.metrics import physics as P


def _noise(v, sigma, seed=0):
    return np.clip(v + np.random.default_rng(seed).normal(0, sigma, v.shape), -1, 1).astype(np.float32)


def _blur(v, sigma):
    if sigma == 0:
        return v
    k = 7
    g = torch.exp(-((torch.arange(k) - 3.0) ** 2) / (2 * sigma**2))
    g = (g / g.sum()).float()
    x = torch.from_numpy(np.ascontiguousarray(v))[:, None]
    for dim in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + dim] = k
        pad = [0] * 6
        pad[2 * (2 - dim)] = pad[2 * (2 - dim) + 1] = 3
        x = F.conv3d(F.pad(x, pad, mode="replicate"), g.view(shape))
    return x[:, 0].numpy()


def _shift(v, s):
    return np.roll(v, s, axis=1)


def test_spectrum_distance_ideal_on_itself_and_monotone(real32):
    assert P.spectrum_distance(real32, real32) == 0.0
    noise = [P.spectrum_distance(real32, _noise(real32, s)) for s in (0.02, 0.05, 0.2)]
    blur = [P.spectrum_distance(real32, _blur(real32, s)) for s in (0.5, 1.0, 2.0)]
    assert noise == sorted(noise) and noise[0] > 0
    assert blur == sorted(blur) and blur[0] > 0


def test_histogram_w1_in_hu_and_tissue_fractions(real32):
    ct = real32[[0, 3]]  # the CT scan and its mirror
    assert P.histogram_w1(ct, ct) == 0.0
    w = [P.histogram_w1(ct, np.clip(ct + s, -1, 1)) for s in (0.01, 0.05, 0.2)]
    assert w == sorted(w) and w[0] > 0
    # a shift of 0.05 in [-1, 1] is 0.05/2 of the 1624-HU window, minus what clipping at the window ends removes
    assert 10 < w[1] <= 0.05 / 2 * 1624 + 1e-6
    fr = P.tissue_fractions(ct)
    assert set(fr) == set(P.TISSUE_BANDS) and 0.99 >= sum(fr.values()) > 0.5
    assert fr["air"] > 0.05 and fr["lung"] > 0.01 and fr["soft_tissue"] > 0.05  # a torso CT
    assert P.tissue_l1(fr, fr) == 0.0
    noisy = [P.tissue_l1(fr, P.tissue_fractions(_noise(ct, s))) for s in (0.02, 0.1, 0.3)]
    assert noisy == sorted(noisy) and noisy[0] > 0


def test_ms_ssim_self_one_and_monotone(real32):
    v = real32[1]
    assert P.ms_ssim_3d(v, v) == pytest.approx(1.0, abs=1e-6)
    noise = [P.ms_ssim_3d(v, _noise(v[None], s)[0]) for s in (0.02, 0.1, 0.3)]
    shift = [P.ms_ssim_3d(v, _shift(v[None], s)[0]) for s in (1, 2, 4)]
    assert noise == sorted(noise, reverse=True) and noise[0] < 1
    assert shift == sorted(shift, reverse=True) and shift[0] < 1


def test_diversity_collapse_signal(real32):
    ms_real = P.pairwise_ms_ssim(real32)
    assert P.diversity_ratio(ms_real, ms_real) == pytest.approx(1.0)
    collapsed = np.stack([_noise(real32[0][None], 0.02, seed=s)[0] for s in range(6)])  # one volume, tiny noise
    ratio = P.diversity_ratio(P.pairwise_ms_ssim(collapsed), ms_real)
    assert ratio < 0.3
    # more noise makes copies of one volume look more diverse: the ratio grows monotonically
    ratios = [P.diversity_ratio(P.pairwise_ms_ssim(np.stack([_noise(real32[0][None], s, seed=i)[0] for i in range(4)])),
                                ms_real) for s in (0.02, 0.1, 0.3)]
    assert ratios == sorted(ratios)


def test_nn_distance_memorisation(real32):
    train = real32[:4]
    copies = P.nn_distance(train[:2], train)
    assert np.allclose(copies, 0.0, atol=1e-6)
    loo = P.nn_distance(real32, real32, exclude_self=True)
    assert np.all(loo > 0)
    d = [float(P.nn_distance(_noise(train[:1], s), train)[0]) for s in (0.01, 0.05, 0.2)]
    assert d == sorted(d) and d[0] > 0
    # volumes that sit somewhere in train (evaluate's real set against its train split): each skips itself only,
    # so the distance is the one to its nearest *other* training volume, as exclude_self gives for train itself
    sub = P.nn_distance(train[[2, 0]], train, exclude_identical=True)
    full = P.nn_distance(train, train, exclude_self=True)
    assert np.allclose(sub, full[[2, 0]]) and np.all(sub > 0)
