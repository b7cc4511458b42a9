"""Statistics of synthetic volumes that need no learned model.

Volumes are (N, S, S, S) float arrays on the model's scale [-1, 1] (z, y, x).

- ``power_spectrum`` / ``spectrum_distance``: radially averaged 3D power spectrum, and the mean |Δ log10 P| between
  the mean spectra of two sets over the radii 1 … S/2 (catches blur, noise and upsampling artefacts a histogram
  misses).
- ``histogram_w1``: Wasserstein-1 between the pooled voxel-intensity distributions, in HU for CT (through the data
  window) or in the [-1, 1] units otherwise; ``tissue_fractions``: fractions of CT voxels in the air, lung, fat, soft
  tissue and bone bands.
- ``ms_ssim_3d`` / ``pairwise_ms_ssim``: 3D multi-scale SSIM (Wang et al., 2003) with a Gaussian window; the mean
  over pairs of one set measures its similarity to itself — synthetic pairs far more alike than real pairs is mode
  collapse.
- ``nn_distance``: RMSE from each volume to its nearest training volume (small against the real leave-one-out
  figure: memorisation).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

# CT bands in HU (EVALUATION.md): air < −900, lung −900…−500, fat −150…−50, soft tissue −50…100, bone > 300
TISSUE_BANDS = {"air": (-np.inf, -900.0), "lung": (-900.0, -500.0), "fat": (-150.0, -50.0),
                "soft_tissue": (-50.0, 100.0), "bone": (300.0, np.inf)}
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _vols(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"volumes must be (N, D, H, W), got shape {x.shape}")
    return x


# ------------------------------------------------------------------------------------------------ spectrum
def power_spectrum(volume) -> np.ndarray:
    """Radially averaged power spectrum of one (D, H, W) volume: P[r] for integer radii r = 0 … S/2."""
    v = np.asarray(volume, dtype=np.float64)
    p = np.abs(np.fft.fftn(v - v.mean())) ** 2 / v.size
    freqs = np.meshgrid(*[np.fft.fftfreq(n) * n for n in v.shape], indexing="ij")
    r = np.rint(np.sqrt(sum(f * f for f in freqs))).astype(np.int64).ravel()
    n_r = min(v.shape) // 2 + 1
    keep = r < n_r
    sums = np.bincount(r[keep], weights=p.ravel()[keep], minlength=n_r)
    counts = np.bincount(r[keep], minlength=n_r)
    return sums / np.maximum(counts, 1)


def mean_spectrum(volumes) -> np.ndarray:
    return np.mean([power_spectrum(v) for v in _vols(volumes)], axis=0)


def spectrum_distance_from(pa: np.ndarray, pb: np.ndarray) -> float:
    """Mean |log10 Pa − log10 Pb| over radii 1 … S/2 (radius 0 is the removed mean)."""
    eps = 1e-12
    return float(np.mean(np.abs(np.log10(pa[1:] + eps) - np.log10(pb[1:] + eps))))


def spectrum_distance(a, b) -> float:
    return spectrum_distance_from(mean_spectrum(a), mean_spectrum(b))


# ------------------------------------------------------------------------------------------------ intensities
def to_physical(x, modality: str, ct_window=(-1024.0, 600.0)) -> np.ndarray:
    """[-1, 1] → HU for CT (inverse of the preprocessing window); unchanged otherwise."""
    x = np.asarray(x, dtype=np.float64)
    if modality != "ct":
        return x
    lo, hi = ct_window
    return (x + 1.0) / 2.0 * (hi - lo) + lo


def quantiles(volumes, n: int = 1001) -> np.ndarray:
    """Quantiles of the pooled voxel intensities (the set's intensity distribution, for W1)."""
    return np.quantile(_vols(volumes).ravel(), np.linspace(0, 1, n))


def histogram_w1_from(qa: np.ndarray, qb: np.ndarray) -> float:
    """W1 between two 1-D distributions given by matching quantile grids: the mean |Qa(p) − Qb(p)|."""
    return float(np.mean(np.abs(np.asarray(qa) - np.asarray(qb))))


def histogram_w1(a, b, modality: str = "ct", ct_window=(-1024.0, 600.0)) -> float:
    qa = to_physical(quantiles(a), modality, ct_window)
    qb = to_physical(quantiles(b), modality, ct_window)
    return histogram_w1_from(qa, qb)


def tissue_fractions(volumes, ct_window=(-1024.0, 600.0)) -> dict[str, float]:
    hu = to_physical(_vols(volumes), "ct", ct_window)
    return {k: float(((hu >= lo) & (hu < hi)).mean()) for k, (lo, hi) in TISSUE_BANDS.items()}


def tissue_l1(fa: dict, fb: dict) -> float:
    """Sum over bands of |fraction_a − fraction_b| (0: same tissue mix)."""
    return float(sum(abs(fa[k] - fb[k]) for k in TISSUE_BANDS))


# ------------------------------------------------------------------------------------------------ MS-SSIM
def _gauss_kernel(k: int, sigma: float) -> torch.Tensor:
    g = torch.exp(-((torch.arange(k, dtype=torch.float64) - (k - 1) / 2) ** 2) / (2 * sigma**2))
    return (g / g.sum()).float()


def _filt(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    k = len(g)
    for dim in range(3):  # separable Gaussian along D, H, W
        shape = [1, 1, 1, 1, 1]
        shape[2 + dim] = k
        x = F.conv3d(x, g.view(shape))
    return x


def _ssim_cs(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, data_range: float):
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = _filt(x, g), _filt(y, g)
    sxx = _filt(x * x, g) - mx * mx
    syy = _filt(y * y, g) - my * my
    sxy = _filt(x * y, g) - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    ssim = (2 * mx * my + c1) / (mx * mx + my * my + c1) * cs
    return ssim.mean(), cs.mean()


def ms_ssim_3d(a, b, data_range: float = 2.0, kernel_size: int = 7, sigma: float = 1.5) -> float:
    """3D MS-SSIM of two (D, H, W) volumes; as many of the 5 standard scales as fit the kernel (weights renormalised)."""
    x = torch.as_tensor(np.array(a, np.float32))[None, None]
    y = torch.as_tensor(np.array(b, np.float32))[None, None]
    if x.shape != y.shape:
        raise ValueError(f"MS-SSIM needs equal shapes, got {tuple(x.shape[2:])} and {tuple(y.shape[2:])}")
    k = min(kernel_size, min(x.shape[2:]))
    g = _gauss_kernel(k, sigma)
    scales = 1
    while scales < len(MS_SSIM_WEIGHTS) and min(x.shape[2:]) // 2**scales >= k:
        scales += 1
    w = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=torch.float64)
    w = w / w.sum()
    vals = []
    for s in range(scales):
        ssim, cs = _ssim_cs(x, y, g, data_range)
        vals.append(ssim if s == scales - 1 else cs)
        if s < scales - 1:
            x, y = F.avg_pool3d(x, 2), F.avg_pool3d(y, 2)
    v = torch.stack([t.double().clamp_min(1e-6) for t in vals])  # negative cs (anti-correlated) clamps to ~0
    return float(torch.prod(v**w))


def pairwise_ms_ssim(volumes, max_pairs: int = 64, seed: int = 0, **kw) -> float:
    """Mean MS-SSIM over (up to ``max_pairs`` random) distinct pairs of one set: 1 = all identical (collapse)."""
    v = _vols(volumes)
    pairs = list(itertools.combinations(range(len(v)), 2))
    if not pairs:
        raise ValueError("pairwise MS-SSIM needs at least 2 volumes")
    if len(pairs) > max_pairs:
        rng = np.random.default_rng(seed)
        pairs = [pairs[i] for i in rng.choice(len(pairs), max_pairs, replace=False)]
    return float(np.mean([ms_ssim_3d(v[i], v[j], **kw) for i, j in pairs]))


def diversity_ratio(ms_synthetic: float, ms_real: float) -> float:
    """(1 − MS-SSIM among synthetic pairs) / (1 − MS-SSIM among real pairs): 1 as diverse as real, → 0 collapse."""
    return float((1 - ms_synthetic) / max(1 - ms_real, 1e-9))


# ------------------------------------------------------------------------------------------------ memorisation
def nn_distance(volumes, train, exclude_self: bool = False, exclude_identical: bool = False) -> np.ndarray:
    """RMSE of each volume to its nearest volume in ``train``. Leave-one-out: ``exclude_self`` when ``volumes`` is
    ``train`` (the diagonal is skipped); ``exclude_identical`` when the volumes are somewhere in ``train`` (a training
    volume at distance < 1e-6, the volume itself or a byte-identical copy, is skipped)."""
    v = _vols(volumes).reshape(len(_vols(volumes)), -1).astype(np.float64)
    t = _vols(train).reshape(len(_vols(train)), -1).astype(np.float64)
    d = (v * v).sum(1)[:, None] + (t * t).sum(1)[None, :] - 2 * v @ t.T
    d = np.sqrt(np.clip(d, 0, None) / v.shape[1])
    if exclude_self:
        if len(t) < 2:
            raise ValueError("leave-one-out nearest-neighbour distance needs at least 2 volumes")
        np.fill_diagonal(d, np.inf)
    if exclude_identical:
        d[d < 1e-6] = np.inf
    return d.min(axis=1)
