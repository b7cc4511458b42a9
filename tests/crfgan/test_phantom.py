"""Procedural CT phantoms: reproducible, distinct, CT-like HU bands, factors that the checks recover, and a
continuity check that tells a simulated seam from a phantom's own curvature."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crfgan import phantom as P

S = 64
BORDERS = list(range(S // 8, S, S // 8))  # sub-volume starts at 64³: every 8 slices


@pytest.fixture(scope="module")
def volumes():
    return [P.phantom_volume(i, S, seed=0, return_labels=True) for i in range(8)]


def test_same_seed_and_index_give_the_same_volume_and_factors():
    a, fa = P.phantom_volume(3, 32, seed=7)
    b, fb = P.phantom_volume(3, 32, seed=7)
    assert a.dtype == np.float32 and a.shape == (32, 32, 32)
    assert np.array_equal(a, b) and fa == fb


def test_indices_and_seeds_give_distinct_volumes(volumes):
    vols = [v for v, _, _ in volumes]
    for i in range(len(vols)):
        for j in range(i + 1, len(vols)):
            assert np.abs(vols[i] - vols[j]).mean() > 20.0, (i, j)  # not just different noise
    other, _ = P.phantom_volume(0, S, seed=1)
    assert np.abs(other - vols[0]).mean() > 20.0
    fractions = {round(f["lung_volume_fraction"], 3) for _, f, _ in volumes}
    assert len(fractions) == len(volumes)  # the factors vary too


def test_hu_bands_of_every_tissue_are_present(volumes):
    v, f, labels = volumes[0]
    assert set(np.unique(labels)) == set(range(8))  # air, fat, soft tissue, lung, heart, vessel, bone, canal
    # median HU of each label's interior (voxels whose 3×3 in-plane neighbours share the label), against CT bands;
    # the canal is too thin to have an interior
    med = {name: float(np.median(v[P._neighbours(labels == k, 1) == 9]))
           for name, k in P.LABELS.items() if name != "canal"}
    assert -1030 < med["air"] < -970
    assert -900 < med["lung"] < -750
    assert -160 < med["fat"] < -40
    assert 10 < med["soft_tissue"] < 80 and 10 < med["heart"] < 80
    assert 120 < med["vessel"] < 300
    assert med["bone"] > 450
    noise = float(np.std(v[:, :4, :4]))  # a corner of air: the noise level
    assert 5 < noise < 25 and abs(noise - f["noise_hu"]) < 6


def test_structures_run_through_every_slice(volumes):
    for _, f, labels in volumes:
        for k in (P.BONE, P.VESSEL, P.LUNG):
            assert ((labels == k).reshape(S, -1).sum(1) > 0).all(), k
        assert 3 <= f["vessel_count"] <= 6 and len(f["vessel_radii_vox"]) == f["vessel_count"]
        assert len(f["spine"]["centre_path_yx"]) == S


def test_factors_are_json_and_the_measured_lung_fraction_matches_them(volumes):
    for v, f, labels in volumes:
        json.dumps(f)
        true = float((labels == P.LUNG).sum()) / float((labels != P.AIR).sum())
        assert abs(f["lung_volume_fraction"] - true) < 1e-4
        m = P.measure(v)
        assert 0.05 < f["lung_volume_fraction"] < 0.4
        assert abs(m["lung_volume_fraction"] - f["lung_volume_fraction"]) < 0.01, (m, f["lung_volume_fraction"])
        assert abs(m["body_volume_fraction"] - f["body_volume_fraction"]) < 0.02


def test_measured_bone_centroid_follows_the_factor_path(volumes):
    for v, f, _ in volumes:
        measured = P.centroid_path(P.structure_mask(v, "bone"))
        path = np.array(f["spine"]["bone_centroid_path_yx"])
        assert np.nanmax(np.abs(measured - path)) < 0.75


def test_continuity_is_about_one_on_phantoms_and_large_with_a_seam(volumes):
    clean, seam = [], []
    for v, _, _ in volumes:
        c = P.continuity(v, BORDERS, "bone")
        assert c["n_border"] == len(BORDERS) and c["missing_slices"] == 0
        clean.append(c["local_ratio"])
        shifted = P.shift_after(v, S // 2, 3)  # the part after one border moved by 3 voxels in x
        seam.append(P.continuity(shifted, BORDERS, "bone")["local_ratio"])
    clean, seam = np.array(clean), np.array(seam)
    assert 0.7 < clean.mean() < 1.3 and clean.max() < 1.9, clean
    assert seam.min() > 2.0 and seam.mean() > 2.5 * clean.mean(), seam


def test_vessel_continuity_sees_seams_at_every_border(volumes):
    """The vessels' centroid is an aggregate over several vessels (noisier than the spine's): a seam at one border
    is not reliably seen, seams at every border are."""
    clean, seams = [], []
    for v, _, _ in volumes:
        clean.append(P.continuity(v, BORDERS, "vessels")["local_ratio"])
        a = v
        for k, b in enumerate(BORDERS):  # every sub-volume shifted by 2 voxels against the previous one
            a = P.shift_after(a, b, 2 if k % 2 == 0 else -2, axis=1 + k % 2)
        seams.append(P.continuity(a, BORDERS, "vessels")["local_ratio"])
    assert 0.6 < np.nanmean(clean) < 1.5, clean
    assert np.nanmean(seams) > 2.0 * np.nanmean(clean), (clean, seams)


def test_to_hu_inverts_the_ct_window():
    hu = np.array([-1024.0, -500.0, 0.0, 600.0], dtype=np.float32)
    unit = (hu + 1024.0) / 1624.0 * 2 - 1
    assert np.allclose(P.to_hu(unit), hu, atol=1e-3)


@pytest.mark.parametrize("uri, message", [
    ("phantom://0?size=32", "count N must be >= 1"),
    ("phantom://x?size=32", "must be an integer"),
    ("phantom://4?size=0", "size must be in [16, 512]"),
    ("phantom://4?size=-8", "size must be in [16, 512]"),
    ("phantom://4?size=32&colour=red", "unknown key 'colour'"),
    ("phantom://4?spacing=0", "spacing must be a positive"),
    ("phantom://4?seed=abc", "is not an integer"),
])
def test_bad_phantom_uris_are_refused_with_the_reason(uri, message):
    with pytest.raises(P.PhantomURIError, match=None) as e:
        P.parse_uri(uri)
    assert message in str(e.value) and uri in str(e.value)


def test_uris_round_trip_and_scan_geometry():
    q = P.parse_uri("phantom://5?size=32&seed=3&spacing=2")
    assert q == {"count": 5, "size": 32, "seed": 3, "spacing_mm": 2.0}
    uri = P.volume_uri(4, 32, 3, 2.0)
    assert P.parse_volume_uri(uri) == {"index": 4, "size": 32, "seed": 3, "spacing_mm": 2.0}
    scan = P.phantom_scan(uri)
    vol, _ = P.phantom_volume(4, 32, 3)
    assert scan.modality == "ct" and scan.spacing.tolist() == [2.0, 2.0, 2.0]
    assert np.array_equal(scan.array, vol.transpose(2, 1, 0))  # (z, y, x) → the (x, y, z) of a Scan
    assert scan.meta["phantom_factors"]["index"] == 4
