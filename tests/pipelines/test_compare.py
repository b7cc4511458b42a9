"""``crfgan compare`` at 32³ on the real-scan tiny shards: four variants × two seeds, one table."""

from __future__ import annotations

import json

import numpy as np

from tests.pipelines.mlflow_fixtures import tiny_shards  # noqa: F401


def test_augment_is_seeded_and_keeps_the_scale():
    from pipelines.compare import augment

    v = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 16)).astype(np.float32)
    a, b = augment(v, 5, seed=1), augment(v, 5, seed=1)
    assert a.shape == (5, 16, 16, 16) and np.array_equal(a, b)
    assert not np.array_equal(a, augment(v, 5, seed=2))
    assert a.min() >= -1 and a.max() <= 1


def test_compare_four_variants_two_seeds(ray_local, tiny_shards, tmp_path, capsys):  # noqa: F811
    from pipelines.cli import main as cli_main
    from pipelines.compare import VARIANTS

    out = tmp_path / "cmp"
    rc = cli_main(["compare", "--data", tiny_shards, "--out", str(out), "--seeds", "0,1", "--volumes", "3",
                   "--augment", "6", "--config", "tiny", "train.iterations=2", "train.log_every=1",
                   "train.checkpoint_every=2", "eval.ssl_steps=5"])
    assert rc == 0, capsys.readouterr().out
    doc = json.loads((out / "compare.json").read_text())
    assert set(doc["per_seed"]) == {"0", "1"} and doc["budget"]["iterations"] == 2
    for v in VARIANTS:
        # the shipped CT+MRI scans are a mixed set: its histogram distance is hist_w1 (model scale), not in HU
        assert set(doc["per_seed"]["0"][v]) >= {"quality_score", "fd_ssl", "kid_ssl", "diversity_ratio", "hist_w1"}
        s = doc["summary"][v]["fd_ssl"]
        assert len(s["values"]) == 2 and s["half_range"] == abs(s["values"][0] - s["values"][1]) / 2
        for seed in (0, 1):
            assert len(list((out / "runs" / f"{v}-s{seed}" / "synthetic").glob("*.nii.gz"))) == 3
            assert (out / "runs" / f"{v}-s{seed}" / "run" / "generator" / "generator.safetensors").is_file()
    # every variant trained with the same seed starts from the same weights but trains differently
    assert doc["per_seed"]["0"]["hagan"]["fd_ssl"] != doc["per_seed"]["0"]["crfgan-ref"]["fd_ssl"]
    md = (out / "compare.md").read_text()
    assert "| fd_ssl |" in md and all(v in md for v in VARIANTS) and " ± " in md
    assert (out / "reports" / "seed0" / "index.html").is_file() and (out / "reports" / "seed1" / "montage_04.png").is_file()
