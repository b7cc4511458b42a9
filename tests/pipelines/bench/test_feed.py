"""``crfgan bench feed`` at 32³: the figures are consistent (every volume of the shards reaches the worker, the
delivered count is the asked one, ratios are labelled), not fast."""

from __future__ import annotations

import argparse
import json

import pytest


def test_feed_delivers_every_volume_of_the_shards(ray_local, tmp_path):
    from pipelines.bench import feed

    args = argparse.Namespace(sizes="32", volumes=3, deliver=12, cpus="1", source="local", batch=2,
                              workdir=str(tmp_path), json=str(tmp_path / "feed.json"))
    out = feed.measure(args)
    (row,) = out["rows"]
    assert row["volumes_in_shards"] == 3
    assert row["delivered"] == 12  # 6 batches of 2: more than one pass over the item list
    assert row["distinct"] == 3  # each volume of the shards reached the worker, no other
    assert row["vol_per_s"] > 0 and row["peak_rss_mb"] >= row["rss_first_mb"] > 0
    assert row["x_vs_1gpu_hagan"] is None  # the published figure is at 256³ only
    doc = json.loads((tmp_path / "feed.json").read_text())
    assert doc["hagan_vol_per_s_per_gpu"] == pytest.approx(80_000 * 4 / (22 * 3600) / 2)
    assert "derived" in doc["hagan_note"]


def test_shards_written_as_preprocess_writes_them(tmp_path):
    from crfgan.shards import read_manifest, read_volumes
    from pipelines.bench.feed import write_shards

    m = write_shards(str(tmp_path / "s"), 32, 3, val=1, target_mb=0.1)  # 0.1 MiB: 1 volume of 64 KiB per shard
    assert read_manifest(str(tmp_path / "s")) == m
    assert [s["volumes"] for s in m["shards"]] == [1, 1, 1, 1] and m["counts"]["split"] == {"train": 3, "val": 1}
    vols = [r["volume"] for r in read_volumes(str(tmp_path / "s"), "train")]
    assert len(vols) == 3 and all(v.shape == (32, 32, 32) and -1 <= v.min() < v.max() <= 1 for v in vols)
    assert len({v.tobytes() for v in vols}) == 3
