"""The evaluation's arithmetic, split so that a pipeline can run the heavy parts in parallel.

``chunk_stats`` (per chunk of one set: features, spectra, intensity histogram, tissue counts, seam profile sums,
nearest-training distances) and ``diversity`` (per set: pairwise MS-SSIM) are independent tasks; ``merge`` sums a
set's chunks; ``compare`` turns the real set's and one synthetic set's merged statistics into the metric table.
"""

from __future__ import annotations

import numpy as np

from . import distances as D
from . import headline as Hd
from . import physics as P
from . import swd as W
from .seam import boundary_profiles, seam_boundaries

HIST_BINS = 2048  # over [-1, 1]: 0.8 HU per bin in the reference CT window


def chunk_stats(vols, ext=None, train=None, leave_one_out: bool = False) -> dict:
    """Statistics of a chunk of one set; ``train``: the memorisation reference (``leave_one_out`` for real volumes
    that are themselves in ``train``)."""
    from .features import extract

    v = np.asarray(vols, dtype=np.float32)
    hist, _ = np.histogram(np.clip(v, -1, 1), bins=HIST_BINS, range=(-1, 1))
    step, jump = boundary_profiles(v)
    out = {"n": len(v), "spectra": np.stack([P.power_spectrum(x) for x in v]), "hist": hist.astype(np.float64),
           "step_sum": np.nan_to_num(step) * len(v), "jump_sum": np.nan_to_num(jump) * len(v),
           "swd": W.describe(v), "hist_q": Hd.histogram_counts(v)}
    if ext is not None:
        out["features"] = extract(ext, v)
    if train is not None and len(train) >= 1:
        out["nn"] = P.nn_distance(v, train, exclude_identical=leave_one_out)
    return out


def merge(chunks: list[dict]) -> dict:
    n = sum(c["n"] for c in chunks)
    out = {"n": n, "spectra": np.concatenate([c["spectra"] for c in chunks]),
           "hist": sum(c["hist"] for c in chunks), "step": sum(c["step_sum"] for c in chunks) / n,
           "jump": sum(c["jump_sum"] for c in chunks) / n,
           "swd": W.merge_descriptors([c["swd"] for c in chunks]), "hist_q": sum(c["hist_q"] for c in chunks)}
    if all("features" in c for c in chunks):
        out["features"] = np.concatenate([c["features"] for c in chunks])
    if all("nn" in c for c in chunks):
        out["nn"] = np.concatenate([c["nn"] for c in chunks])
    out["spectrum"] = out["spectra"].mean(axis=0)
    return out


def diversity(vols, max_pairs: int = 32, seed: int = 0) -> float:
    return P.pairwise_ms_ssim(vols, max_pairs=max_pairs, seed=seed) if len(vols) >= 2 else float("nan")


def _hist_w1(ha, hb, modality: str, window) -> float:
    """W1 between two histograms on the same bins (|CDF_a − CDF_b| summed × bin width), in HU for CT."""
    ca, cb = np.cumsum(ha) / ha.sum(), np.cumsum(hb) / hb.sum()
    width = 2.0 / HIST_BINS
    if modality == "ct":
        width *= (window[1] - window[0]) / 2
    return float(np.abs(ca - cb).sum() * width)


def tissue_from_hist(h, window) -> dict:
    centres = P.to_physical(np.linspace(-1, 1, HIST_BINS + 1)[:-1] + 1.0 / HIST_BINS, "ct", window)
    return {k: float(h[(centres >= lo) & (centres < hi)].sum() / h.sum()) for k, (lo, hi) in P.TISSUE_BANDS.items()}


def seam_from_profile(step, jump, depth: int, geometry: tuple[int, int] | None) -> dict:
    if geometry is None:
        return {}
    seams, refs = seam_boundaries(depth, *geometry)
    if not seams or not refs:
        return {}
    r = lambda p: float(np.mean(p[seams]) / max(np.mean(p[refs]), 1e-12))  # noqa: E731
    return {"seam_score": r(np.asarray(step)), "seam_grad_score": r(np.asarray(jump))}


def compare(real: dict, syn: dict, modality: str, window, ms_real: float, ms_syn: float,
            geometry: tuple[int, int] | None, kid_subsets: int = 100) -> dict:
    """One synthetic set against the real set: the metric table (lower is better unless stated)."""
    m: dict = {"quality_score": float("nan"), "n_real": real["n"], "n_synthetic": syn["n"]}
    if "features" in real and "features" in syn:
        fr, fs = real["features"], syn["features"]
        m["fd_ssl"] = D.frechet_distance(fr, fs)
        # subsets of half the smaller set (at most 1000): with whole sets every subset would be the same
        m["kid_ssl"], m["kid_ssl_std"] = D.kid(fr, fs, subsets=kid_subsets,
                                               subset_size=min(1000, max(2, min(len(fr), len(fs)) // 2)))
        m["mmd_ssl"] = D.mmd_gaussian(fr, fs)
    m["spectrum_dist"] = P.spectrum_distance_from(real["spectrum"], syn["spectrum"])
    m["hist_w1_hu" if modality == "ct" else "hist_w1"] = _hist_w1(real["hist"], syn["hist"], modality, window)
    if modality == "ct":
        m["tissue_l1"] = P.tissue_l1(tissue_from_hist(real["hist"], window), tissue_from_hist(syn["hist"], window))
    m["ms_ssim_synthetic"], m["ms_ssim_real"] = ms_syn, ms_real
    m["diversity_ratio"] = P.diversity_ratio(ms_syn, ms_real)
    if "nn" in syn and "nn" in real:
        m["nn_rmse"] = float(np.mean(syn["nn"]))
        m["nn_rmse_real"] = float(np.mean(real["nn"][np.isfinite(real["nn"])])) if np.isfinite(real["nn"]).any() \
            else float("nan")
        m["nn_ratio"] = m["nn_rmse"] / m["nn_rmse_real"] if m["nn_rmse_real"] > 0 else float("nan")
    depth = len(syn["step"])
    m.update(seam_from_profile(syn["step"], syn["jump"], depth, geometry))
    real_seam = seam_from_profile(real["step"], real["jump"], depth, geometry)
    if real_seam:
        m["seam_score_real"] = real_seam["seam_score"]
    if real["n"] >= 2 and syn["n"] >= 2:  # the headline (crfgan.metrics.headline) and its terms
        sw = W.score_from(W.reference_from(real["swd"]), syn["swd"])
        shift = Hd.intensity_shift(real["hist_q"], syn["hist_q"], modality, window)
        head = Hd.combine(sw["swd_levels"][0], shift, sw["dup_ratio"], m.get("seam_score"))
        m.update(head, intensity_shift_hu=shift, dup_ratio=sw["dup_ratio"],
                 memorisation_ratio=sw["memorisation_ratio"], swd_all=sw["swd"])
    return m


SEAM_LOW = 0.8  # a seam score this far below 1 is not "better than no seam": the seam geometry is probably wrong


def seam_notes(metrics: dict, geometry: tuple[int, int] | None) -> list[str]:
    """Notes for seam scores that cannot be read as "no seam": below ``SEAM_LOW`` the assumed border depths change
    less than the reference depths (borders half a slab off score about 0.45; so does a pattern at the reference
    phase)."""
    out = []
    for name, m in metrics.items():
        x = m.get("seam_score")
        if x is not None and np.isfinite(x) and x < SEAM_LOW:
            period = f" (border period {geometry[0]})" if geometry else ""
            out.append(f"{name}: seam_score {x:.2f} is below {SEAM_LOW}: the assumed sub-volume borders{period} change "
                       "less than the reference depths of the same phase — the seam geometry does not match how these "
                       "volumes were rendered (check --model / model.*), or they hold a stronger periodic pattern at "
                       "the reference depths; either way the score cannot be read as 'no seam'")
    return out


# comparison mode: a ratio to the first set only where it means something (ideal 0 and never negative);
# every other metric gets a difference
RATIO_METRICS = {"quality_score", "swd_fine", "swd_all", "fd_ssl", "spectrum_dist", "hist_w1_hu", "hist_w1",
                 "tissue_l1", "fid_med3d"}


def versus_first(metrics: dict[str, dict]) -> dict[str, dict]:
    """{set: {metric: {"ratio": x} (RATIO_METRICS) or {"difference": x} (the rest) against the first set}}."""
    names = list(metrics)
    first = metrics[names[0]]
    out = {}
    for n, m in metrics.items():
        out[n] = {}
        for k, v in m.items():
            f = first.get(k)
            if k.startswith("n_") or not isinstance(v, float) or not isinstance(f, float):
                continue
            if k in RATIO_METRICS:
                out[n][k] = {"ratio": v / f if f > 0 else None}
            else:
                out[n][k] = {"difference": v - f}
    return out


# which way is better, for the report's "how to read"
IDEAL = {"quality_score": "floor (see README)", "swd_fine": "0", "intensity_term": "0", "collapse_term": "0",
         "seam_term": "0", "intensity_shift_hu": "0 HU", "dup_ratio": "≈1 (→0: copies of each other)",
         "memorisation_ratio": "≳1 (→0: training copies, plain or mirrored)", "swd_all": "0", "fd_ssl": "0",
         "kid_ssl": "0", "mmd_ssl": "0", "spectrum_dist": "0", "hist_w1_hu": "0 HU", "hist_w1": "0",
         "tissue_l1": "0", "diversity_ratio": "1 (→0: collapse)", "nn_ratio": "≈1 (≪1: memorised)",
         "seam_score": "1 (>1: seam)", "seam_grad_score": "1 (>1: seam)", "fid_med3d": "0", "mmd_med3d": "0"}
