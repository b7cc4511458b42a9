import json

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest

from crfgan.config import load_config
from crfgan.metrics import sets as S

SIZE = 32  # the smallest image_size the config accepts


@pytest.fixture(scope="module")
def cfg():
    return load_config("tiny", [f"model.image_size={SIZE}"])


def _ramp_zyx(seed=0):
    """A volume in [-1, 1] that differs along every axis (z dominant), so an axis swap shows."""
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, SIZE),) * 3, indexing="ij")
    rng = np.random.default_rng(seed)
    return np.clip(0.6 * z + 0.2 * y - 0.1 * x + rng.normal(0, 0.02, z.shape), -1, 1).astype(np.float32)


def _save(path, zyx, dtype=np.float32, spacing=1.0):
    affine = np.diag([spacing] * 3 + [1.0])
    nib.save(nib.Nifti1Image(np.asarray(zyx).transpose(2, 1, 0).astype(dtype), affine), path)


def _hu(v, window):
    lo, hi = window
    return np.rint((v + 1) / 2 * (hi - lo) + lo)


def test_to_unit_scale_follows_the_rules_in_order(cfg):
    rng = np.random.default_rng(0)
    x = rng.uniform(-3000, 3000, (4, 4, 4))
    # 1. the sidecar's range wins, whatever the modality
    got = S.to_unit_scale(x, {"intensity": {"range": [-500, 500]}}, cfg, "mri")
    np.testing.assert_allclose(got, np.clip(x / 500, -1, 1), atol=1e-6)
    # 2. CT without a sidecar: the config's window
    lo, hi = cfg.data.ct_window
    np.testing.assert_allclose(S.to_unit_scale(x, {}, cfg, "ct"), np.clip((x - lo) / (hi - lo) * 2 - 1, -1, 1),
                               atol=1e-6)
    # 3. MRI already on [-1, 1]: unchanged
    u = rng.uniform(-1, 1, (4, 4, 4))
    np.testing.assert_allclose(S.to_unit_scale(u, {}, cfg, "mri"), u, atol=1e-7)
    # 4. any other MRI: its percentiles map to ±1
    m = rng.uniform(0, 1000, (8, 8, 8))
    p_lo, p_hi = np.percentile(m, list(cfg.data.mri_percentiles))
    got = S.to_unit_scale(m, {}, cfg, "mri")
    assert got.dtype == np.float32 and got.min() == -1.0 and got.max() == 1.0
    inside = (m > p_lo) & (m < p_hi)
    np.testing.assert_allclose(got[inside], ((m - p_lo) / (p_hi - p_lo) * 2 - 1)[inside], atol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        S.to_unit_scale(x, {"intensity": {"range": [5, 5]}}, cfg, "ct")


def test_int16_hu_with_sidecar_comes_back_in_zyx(tmp_path, cfg):
    vols = [_ramp_zyx(i) for i in range(2)]
    window = (-1000.0, 1000.0)  # the sidecar's range, not the config's window
    for i, v in enumerate(vols):
        _save(tmp_path / f"v{i}.nii.gz", _hu(v, window), np.int16)
        (tmp_path / f"v{i}.json").write_text(json.dumps({"modality": "ct", "intensity": {"range": list(window)}}))
    st = S.load_set(str(tmp_path), "hu", cfg, log=lambda s: None)
    assert st.volumes.shape == (2, SIZE, SIZE, SIZE) and st.volumes.dtype == np.float32
    assert st.modality == "ct" and st.errors == [] and len(st.files) == 2
    np.testing.assert_allclose(st.volumes, np.stack(vols), atol=1.0 / (window[1] - window[0]) + 1e-6)


def test_unreadable_files_are_listed_and_the_set_goes_on(tmp_path, cfg):
    for i in range(3):
        _save(tmp_path / f"ok{i}.nii", _ramp_zyx(i))
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8bnot gzip")
    (tmp_path / "empty.nii").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a volume")  # not NIfTI: not even listed
    (tmp_path / "ok0.json").write_text("{broken json")  # a bad sidecar is ignored
    logs = []
    st = S.load_set(str(tmp_path), "s", cfg, log=logs.append)
    assert len(st.volumes) == 3 and [f.split("/")[-1] for f in st.files] == ["ok0.nii", "ok1.nii", "ok2.nii"]
    assert sorted(e["file"].split("/")[-1] for e in st.errors) == ["bad.nii.gz", "empty.nii"]
    assert all(e["reason"] for e in st.errors) and len(logs) == 2
    np.testing.assert_allclose(st.volumes[0], _ramp_zyx(0), atol=1e-6)  # float in [-1, 1] kept as is
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "x.nii").write_bytes(b"junk")
    with pytest.raises(ValueError, match="no usable NIfTI"):
        S.load_set(str(only_bad), "b", cfg, log=lambda s: None)


def test_max_volumes_and_the_data_hash(tmp_path, cfg):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
    for i in range(3):
        _save(a / f"v{i}.nii", _ramp_zyx(i))
        _save(b / f"v{i}.nii", _ramp_zyx(i) if i < 2 else -_ramp_zyx(i))
    quiet = dict(log=lambda s: None)
    two = S.load_set(str(a), "a", cfg, max_volumes=2, **quiet)
    assert len(two.volumes) == 2 and two.files[-1].endswith("v1.nii")
    assert two.data_hash == S.load_set(str(b), "b", cfg, max_volumes=2, **quiet).data_hash  # same volumes
    full_a, full_b = S.load_set(str(a), "a", cfg, **quiet), S.load_set(str(b), "b", cfg, **quiet)
    assert len({two.data_hash, full_a.data_hash, full_b.data_hash}) == 3


def test_list_nifti_and_is_shards(tmp_path):
    for n in ("b.nii.gz", "a.NII", "c.json"):
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.nii").write_bytes(b"x")
    assert [p.split("/")[-1] for p in S.list_nifti(str(tmp_path))] == ["a.NII", "b.nii.gz"]
    assert S.list_nifti(str(tmp_path / "b.nii.gz"))[0].endswith("b.nii.gz")
    with pytest.raises(FileNotFoundError):
        S.list_nifti(str(tmp_path / "missing"))
    assert not S.is_shards(str(tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps({"volumes": 3}))  # a synthesis job's manifest
    assert not S.is_shards(str(tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps({"shards": []}))
    assert S.is_shards(str(tmp_path))


def test_a_raw_scan_goes_through_preprocessing(tmp_path, cfg):
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1000, 1000, (20, 24, 28)).astype(np.int16)  # not S³: a raw CT scan (40 mm and more)
    _save(tmp_path / "raw.nii.gz", hu, np.int16, spacing=2.0)
    st = S.load_set(str(tmp_path), "raw", cfg, log=lambda s: None)
    assert st.volumes.shape == (1, SIZE, SIZE, SIZE) and st.errors == []
    assert st.volumes.min() >= -1 and st.volumes.max() <= 1 and st.volumes.std() > 0


def test_load_shards_keeps_the_train_split_and_marks_mixed_sets(tmp_path, cfg):
    from crfgan.shards import manifest_hash, rows_to_table

    vols = [_ramp_zyx(i) for i in range(4)]
    splits, mods = ["train", "val", "train", "train"], ["ct", "ct", "mri", "ct"]
    rows = [{"volume_id": f"v{i}", "source_uri": f"s{i}", "modality": mods[i], "split": splits[i], "volume": v,
             "spacing": [2.0] * 3, "original_shape": [SIZE] * 3, "original_spacing": [2.0] * 3,
             "image_size": SIZE, "slab_depth": 4, "num_slabs": 4, "config_hash": "h"} for i, v in enumerate(vols)]
    pq.write_table(rows_to_table(rows, SIZE), tmp_path / "shard-0.parquet", row_group_size=1)
    manifest = {"shards": [{"path": "shard-0.parquet", "split": "train", "volumes": 4}], "config": cfg.to_dict()}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    st = S.load_set(str(tmp_path), "real", cfg, max_volumes=2)
    assert st.modality == "mixed" and st.data_hash == manifest_hash(manifest)
    assert st.volumes.shape == (2, SIZE, SIZE, SIZE)
    np.testing.assert_allclose(st.volumes, np.stack(vols[:2]), atol=2e-3)  # stored as float16
    assert st.train.shape == (3, SIZE, SIZE, SIZE)  # every train volume, whatever max_volumes
    np.testing.assert_allclose(st.train, np.stack([vols[0], vols[2], vols[3]]), atol=2e-3)
    assert tuple(st.ct_window) == tuple(cfg.data.ct_window)
