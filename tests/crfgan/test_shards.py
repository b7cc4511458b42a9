"""crfgan.shards: schema round trip, float16 precision, stable split, shard plan, atomic writes, reader."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from crfgan import shards as sh


def rows(n, s=32, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        vol = rng.uniform(-1, 1, (s, s, s)).astype(np.float32)
        vid = sh.volume_id(vol, [1.0, 1.0, 1.0])
        out.append({"volume_id": vid, "source_uri": f"/data/scan{i}.nii.gz", "modality": "ct",
                    "split": sh.split_for(vid, 0.5), "volume": vol,
                    "spacing": [1.0, 2.0, 3.0], "original_shape": [100, 110, 120], "original_spacing": [3.0, 2.0, 1.0],
                    "image_size": s, "slab_depth": s // 8, "num_slabs": 8, "config_hash": "abc"})
    return out


def write_run(root, rs, target_mb=0.2):
    fs, r = sh.filesystem(str(root))
    staging = sh.join(r, sh.STAGING_DIR, "u.parquet")
    sh.write_table_atomic(fs, staging, sh.rows_to_table(rs, 32))
    metas = [{"volume_id": x["volume_id"], "source_uri": x["source_uri"], "split": x["split"], "nbytes": 32**3 * 2,
              "staging": staging, "row": i} for i, x in enumerate(rs)]
    plans = sh.plan_shards(metas, target_mb)
    written = [sh.write_shard(fs, r, p) for p in plans]
    sh.write_manifest(fs, r, {"shards": written})
    return plans, written


def test_split_is_stable_and_near_fraction():
    ids = [sh.volume_id(np.full((2, 2, 2), i, np.float32), [1, 1, 1]) for i in range(2000)]
    assert len(set(ids)) == len(ids)
    splits = [sh.split_for(i, 0.1) for i in ids]
    assert splits == [sh.split_for(i, 0.1) for i in ids]
    assert 0.08 < splits.count("val") / len(ids) < 0.12


def test_volume_id_is_the_content_not_the_place():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    vid = sh.volume_id(a, [1.0, 1.0, 2.0])
    assert vid == sh.volume_id(a.copy(), (1.0, 1.0, 2.0)) and len(vid) == 16  # same voxels → same id, anywhere
    assert vid != sh.volume_id(a, [1.0, 1.0, 2.5])  # spacing is part of the scan
    assert vid != sh.volume_id(a.reshape(2, 4, 3), [1.0, 1.0, 2.0])  # so is the shape
    b = a.copy()
    b[0, 0, 0] += 1
    assert vid != sh.volume_id(b, [1.0, 1.0, 2.0])


def test_round_trip_float16_precision(tmp_path):
    rs = rows(6)
    write_run(tmp_path, rs)
    got = {r["volume_id"]: r for split in ("train", "val") for r in sh.read_volumes(tmp_path, split)}
    assert len(got) == 6
    for r in rs:
        g = got[r["volume_id"]]
        assert g["volume"].dtype == np.float32 and g["volume"].shape == (32, 32, 32)
        assert np.abs(g["volume"] - r["volume"]).max() <= 2.0**-12  # float16 rounding in [-1, 1]
        assert "low_res" not in g and g["split"] == r["split"]
        assert g["spacing"] == [1.0, 2.0, 3.0] and g["slab_depth"] == 4 and g["num_slabs"] == 8


def test_shards_cut_by_size_and_deterministic(tmp_path):
    rs = rows(8)
    plans, written = write_run(tmp_path / "a", rs, target_mb=0.13)  # 2 volumes (2 × 64 KiB) per shard
    assert all(len(p["items"]) <= 2 for p in plans)
    assert sum(w["volumes"] for w in written) == 8
    assert all(p["volume_ids"] == sorted(p["volume_ids"]) for p in plans)
    plans_b, _ = write_run(tmp_path / "b", list(reversed(rs)), target_mb=0.13)
    assert [p["volume_ids"] for p in plans] == [p["volume_ids"] for p in plans_b]
    for w in written:
        a = pq.read_table(tmp_path / "a" / w["path"])
        b = pq.read_table(tmp_path / "b" / w["path"])
        assert a.equals(b)
    assert sh.list_shards(tmp_path / "a", "val") == [f"{tmp_path / 'a'}/{w['path']}" for w in written
                                                     if w["split"] == "val"]
    pf = pq.ParquetFile(tmp_path / "a" / written[0]["path"])
    assert pf.num_row_groups == written[0]["volumes"]  # one row group per volume


def test_copies_of_one_scan_pack_the_same_way_in_any_order(tmp_path):
    rs = rows(3)
    rs += [{**r, "source_uri": f"/copies/{i}.nii.gz"} for i, r in enumerate(rs)]  # same voxels → same id, other place
    _, written = write_run(tmp_path / "a", rs)
    _, written_b = write_run(tmp_path / "b", list(reversed(rs)))
    assert written == written_b and sum(w["volumes"] for w in written) == 6
    for w in written:
        assert pq.read_table(tmp_path / "a" / w["path"]).equals(pq.read_table(tmp_path / "b" / w["path"]))


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    fs, root = sh.filesystem(str(tmp_path))
    target = sh.join(root, "shards", "train-00000.parquet")

    def boom(table, where, **kw):
        with open(where, "wb") as f:
            f.write(b"PAR1 partial")
        raise OSError("disk full")

    monkeypatch.setattr(sh.pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        sh.write_table_atomic(fs, target, sh.rows_to_table(rows(1), 32))
    assert os.listdir(tmp_path / "shards") == []


def test_errors_table_and_manifest(tmp_path):
    fs, root = sh.filesystem(str(tmp_path))
    errs = [{"source_uri": "b.nii", "stage": "read", "reason": "empty"}, {"source_uri": "a.nii", "stage": "prepare",
                                                                          "reason": "nan"}]
    assert sh.write_errors(fs, root, errs) == "errors.parquet"
    t = pq.read_table(tmp_path / "errors.parquet")
    assert t.schema.names == ["source_uri", "stage", "reason"] and t.column("source_uri").to_pylist() == ["a.nii",
                                                                                                          "b.nii"]
    sh.write_manifest(fs, root, {"volumes_ok": 3})
    assert json.loads((tmp_path / "manifest.json").read_text()) == {"volumes_ok": 3}
    assert sh.read_manifest(str(tmp_path)) == {"volumes_ok": 3}
