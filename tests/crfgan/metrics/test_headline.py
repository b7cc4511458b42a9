"""The headline quality_score: its terms, and that it ranks every degradation of a held-out real set worse than the
held-out set itself (the floor) — the property that makes it worth optimising."""

import numpy as np
import pytest

from crfgan.metrics import degrade, headline

SCAN = "crfgan/data/example_ct.nii.gz"


def test_terms_are_zero_inside_their_tolerances_and_grow_beyond():
    base = headline.combine(2.0, 10.0, 1.0, 1.0)
    assert base["quality_score"] == pytest.approx(2.0)
    assert headline.combine(2.0, -130.0, 1.0)["intensity_term"] == pytest.approx(50.0)
    assert headline.combine(2.0, 0.0, 0.0)["collapse_term"] == pytest.approx(10.0)
    assert headline.combine(2.0, 0.0, 1.0, 1.6)["seam_term"] == pytest.approx(10.0)
    assert headline.combine(2.0, 0.0, 1.0, float("nan"))["seam_term"] == 0.0


def test_intensity_shift_finds_an_offset_in_hu():
    rng = np.random.default_rng(0)
    v = np.clip(rng.choice([-1.0, -0.7, 0.3], size=(4, 16, 16, 16)) + rng.normal(0, 0.02, (4, 16, 16, 16)), -1, 1)
    h = headline.histogram_counts(v)
    assert headline.intensity_shift(h, h) == 0.0
    assert headline.intensity_shift(h, headline.histogram_counts(v + 100 / 812)) == pytest.approx(100, abs=8)
    # air clipped at the window's bottom cannot move down: the clipped levels are left out, so −100 HU reads −100
    assert headline.intensity_shift(h, headline.histogram_counts(v - 100 / 812)) == pytest.approx(-100, abs=8)


@pytest.mark.parametrize("mu,sd", [(0.0, 0.3), (0.0, 0.5), (-0.5, 0.3)])
def test_intensity_shift_reads_offsets_on_a_broad_single_peak(mu, sd):
    # one broad peak (a blurry generator's histogram, or MRI)
    v = np.clip(np.random.default_rng(0).normal(mu, sd, (4, 32, 32, 32)), -1, 1).astype(np.float32)
    h = headline.histogram_counts(v)
    for hu in (25.0, 100.0, -25.0, -100.0):
        got = headline.intensity_shift(h, headline.histogram_counts(np.clip(v + hu / 812, -1, 1)))
        assert got == pytest.approx(hu, abs=max(12.0, 0.12 * abs(hu)))


def test_intensity_shift_reads_no_offset_for_blur_and_the_offset_of_a_blurred_set():
    # blur merges the sharp air/lung/fat/soft-tissue peaks into broad ones: a peak-alignment estimator read 120 HU
    # for σ = 2 here (it matched the merged peak to the wrong real peak); blur is no offset
    from scipy.ndimage import gaussian_filter

    from crfgan.phantom import phantom_volume

    vols = np.stack([np.clip((phantom_volume(i, 64, seed=0)[0] + 212) / 812, -1, 1) for i in range(4)])
    real = headline.histogram_counts(vols[:2])
    held = vols[2:]
    assert abs(headline.intensity_shift(real, headline.histogram_counts(held))) < 15
    for sigma in (1.0, 2.0, 4.0):
        blurred = np.stack([gaussian_filter(v, sigma) for v in held])
        assert abs(headline.intensity_shift(real, headline.histogram_counts(blurred))) < 25, sigma
        got = headline.intensity_shift(real, headline.histogram_counts(np.clip(blurred + 100 / 812, -1, 1)))
        assert got == pytest.approx(100, abs=25), sigma


@pytest.fixture(scope="module")
def ct():
    from pathlib import Path

    from pipelines.bench.metrics import ct_source

    return ct_source(str(Path(__file__).resolve().parents[3] / SCAN), 3.0)


@pytest.mark.parametrize("size,rows,geometry,n,seeds", [
    (32, [r for r in degrade.SUITE if r not in degrade.MEMORY_ROWS + degrade.SEAM_ROWS], (4, 4), 32, 2),
    (64, list(degrade.SEAM_ROWS), (8, 4), 16, 1),  # the seam term (none at 32³); the rest: the 32³ case
])
def test_every_degradation_scores_worse_than_the_held_out_floor(ct, size, rows, geometry, n, seeds):
    from pipelines.bench.metrics import crops

    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        real, held_out = crops(ct, size, n, rng), crops(ct, size, n, rng)
        ref = headline.reference(real)
        floor = headline.assess(ref, held_out, geometry)["quality_score"]
        ctx = {"hu": headline.HU_PER_UNIT, "slab": geometry[0], "reference": real}
        for name in rows:
            bad = degrade.SUITE[name][0](held_out, np.random.default_rng(100 + seed), ctx)
            q = headline.assess(ref, bad, geometry)["quality_score"]
            assert q > 1.3 * floor, f"{size}³ seed {seed}: {name} scored {q:.3g}, the held-out floor {floor:.3g}"


def test_training_time_score_is_deterministic_and_reports_components():
    import torch

    from crfgan.config import load_config
    from crfgan.generator import Generator
    from crfgan.metrics.quick import headline_state, quality_score_quick

    cfg = load_config("tiny", ["eval.score_volumes=4"])
    torch.manual_seed(0)
    g = Generator(cfg.model)
    real = np.random.default_rng(0).uniform(-1, 1, (4,) + (cfg.model.image_size,) * 3).astype(np.float32)
    state = headline_state(real, cfg)
    a, b = quality_score_quick(g, cfg, state), quality_score_quick(g, cfg, state)
    assert a.keys() == b.keys() and all(a[k] == b[k] or (np.isnan(a[k]) and np.isnan(b[k])) for k in a)
    assert np.isnan(a["seam_score"])  # at 32³ the phase-matched seam score has no reference boundaries
    assert set(a) == {"quality_score", "swd_fine", "intensity_shift_hu", "dup_ratio", "seam_score"}
    assert np.isfinite(a["quality_score"]) and a["quality_score"] > 0
