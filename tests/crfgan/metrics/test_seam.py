import numpy as np
import pytest
import torch

from crfgan.config import load_config
from crfgan.generator import Generator
from crfgan.metrics.seam import boundary_profiles, model_seam_geometry, seam_boundaries, seam_score


def test_boundaries_are_phase_matched():
    seams, refs = seam_boundaries(64, 8, 4)
    assert seams == [8, 16, 24, 32, 40, 48, 56]
    assert refs == [4, 12, 20, 28, 36, 44, 52, 60]
    with pytest.raises(ValueError, match="64³ or more"):
        seam_score(np.zeros((1, 32, 8, 8)), 4, 4)  # at 32³ every phase-0 boundary is a seam


def test_real_scans_score_near_one(real64):
    s = seam_score(real64, 8, 4)
    assert 0.8 < s["seam_score"] < 1.25
    assert 0.7 < s["seam_grad_score"] < 1.4


def test_planted_seam_is_detected(real64):
    planted = real64.copy()
    planted[:, 8::8] -= 0.15  # a dark line at every sub-volume border (the artefact seen in CRF-GAN renders)
    s = seam_score(np.clip(planted, -1, 1), 8, 4)
    assert s["seam_score"] > 1.5 and s["seam_grad_score"] > 1.5
    weak = real64.copy()
    weak[:, 8::8] -= 0.03
    assert 1.0 < seam_score(weak, 8, 4)["seam_score"] < s["seam_score"]


def test_random_generator_one_pass_scores_one_only_when_phase_matched():
    cfg = load_config("tiny", ["model.image_size=64"])
    torch.manual_seed(0)
    g = Generator(cfg.model).eval()
    vols = g.render(torch.randn(4, cfg.model.latent_dim), tiled=False)[:, 0].numpy()
    period, grid = model_seam_geometry(cfg.model)
    assert (period, grid) == (8, 4)
    s = seam_score(vols, period, grid)
    assert 0.85 < s["seam_score"] < 1.15 and 0.85 < s["seam_grad_score"] < 1.15
    # against all other depths the upsampling grid alone moves the figure: the reason for phase matching
    step, _ = boundary_profiles(vols)
    naive = np.mean(step[s["seams"]]) / np.nanmean(np.delete(step, [0, *s["seams"]]))
    assert abs(naive - 1) > abs(s["seam_score"] - 1) + 0.05


def test_seams_half_a_slab_off_score_below_one_and_are_flagged(real64):
    from crfgan.metrics.compute import SEAM_LOW, seam_notes

    off = real64.copy()
    off[:, 4::8] -= 0.15  # the jumps sit half a slab away from the assumed borders
    low = seam_score(np.clip(off, -1, 1), 8, 4)["seam_score"]
    ok = seam_score(real64, 8, 4)["seam_score"]
    assert low < SEAM_LOW < ok
    notes = seam_notes({"off": {"seam_score": low}, "real-like": {"seam_score": ok}, "32": {}}, (8, 4))
    assert len(notes) == 1 and notes[0].startswith("off: seam_score") and "border period 8" in notes[0]
