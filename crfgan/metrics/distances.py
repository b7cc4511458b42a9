"""Distances between two feature sets (N, F): Fréchet distance, unbiased KID, Gaussian-kernel MMD.

- Fréchet distance (Heusel et al., NeurIPS 2017): ``|mu_a - mu_b|² + tr(Sa + Sb - 2 (Sa^½ Sb Sa^½)^½)``. The trace
  of the matrix square root is computed from the eigenvalues of the symmetric ``Sa^½ Sb Sa^½`` (``eigh``), which stays
  real and stable when a covariance is rank-deficient (fewer volumes than feature dimensions, common in 3D).
  On features of our own extractor it is ``fd_ssl``, not FID.
- KID (Bińkowski et al., ICLR 2018): unbiased MMD² with the cubic polynomial kernel ``(x·y / F + 1)³``, averaged
  over random subsets; returns (mean, std). Its expectation is 0 for two samples of one distribution.
- MMD with a Gaussian kernel whose bandwidth is the median pairwise squared distance of the pooled set (the
  median heuristic, as HA-GAN's evaluation); unbiased MMD² estimator.
"""

from __future__ import annotations

import numpy as np


def _as2d(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, F), got shape {x.shape}")
    return x


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance_stats(mu_a, sig_a, mu_b, sig_b) -> float:
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    sig_a, sig_b = np.atleast_2d(sig_a).astype(np.float64), np.atleast_2d(sig_b).astype(np.float64)
    ra = _sqrt_psd(sig_a)
    inner = ra @ sig_b @ ra
    w = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_sqrt = float(np.sqrt(np.clip(w, 0, None)).sum())
    d = float(((mu_a - mu_b) ** 2).sum() + np.trace(sig_a) + np.trace(sig_b) - 2 * tr_sqrt)
    return max(d, 0.0)


def stats(features) -> tuple[np.ndarray, np.ndarray]:
    f = _as2d(features)
    if len(f) < 2:
        raise ValueError(f"a Fréchet distance needs at least 2 feature vectors per set, got {len(f)}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(a, b) -> float:
    """Fréchet distance between the Gaussians fitted to feature sets ``a`` (N, F) and ``b`` (M, F)."""
    return frechet_distance_stats(*stats(a), *stats(b))


def _mmd2_unbiased(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    m, n = len(kxx), len(kyy)
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2 * kxy.mean())


def kid(a, b, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Unbiased KID (mean, std over ``subsets`` random subsets of ``min(subset_size, N, M)`` vectors per set)."""
    a, b = _as2d(a), _as2d(b)
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs at least 2 feature vectors per set, got {len(a)} and {len(b)}")
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        vals.append(_mmd2_unbiased((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3))
    v = np.asarray(vals)
    return float(v.mean()), float(v.std())


def _sqdist(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.clip((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T, 0, None)


def mmd_gaussian(a, b, bandwidth: float | None = None) -> float:
    """Unbiased MMD² with ``exp(-|x-y|² / bandwidth)``; bandwidth = median pooled pairwise squared distance."""
    a, b = _as2d(a), _as2d(b)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"MMD needs at least 2 feature vectors per set, got {len(a)} and {len(b)}")
    if bandwidth is None:
        z = np.concatenate([a, b])
        d = _sqdist(z, z)
        off = d[~np.eye(len(z), dtype=bool)]
        bandwidth = float(np.median(off)) or 1.0
    k = lambda x, y: np.exp(-_sqdist(x, y) / bandwidth)  # noqa: E731
    return _mmd2_unbiased(k(a, a), k(b, b), k(a, b))
