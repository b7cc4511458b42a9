"""``crfgan compare`` at 32³ on the real-scan tiny shards: four variants × two seeds, one table."""

from __future__ import annotations

import json

import numpy as np
import pytest

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


def test_verdict_needs_two_seeds_and_separated_ranges():
    from pipelines.compare import distance_to_ideal, verdict

    # lower is better for a distance; closer to 1 is better for diversity_ratio; ≳1 for memorisation
    assert distance_to_ideal("fd_ssl", 2.0) == 2.0 and distance_to_ideal("kid_ssl", -0.5) == 0.5
    assert distance_to_ideal("diversity_ratio", 0.4) == pytest.approx(0.6)
    assert distance_to_ideal("diversity_ratio", 1.2) == pytest.approx(0.2)
    assert distance_to_ideal("memorisation_ratio", 1.3) == 0.0 and distance_to_ideal("ms_ssim_synthetic", 0.5) is None
    assert verdict("fd_ssl", [1.0, 1.2, 1.1], [2.0, 2.5, 2.2]) == "better"
    assert verdict("fd_ssl", [2.0, 2.5, 2.2], [1.0, 1.2, 1.1]) == "worse"
    assert verdict("fd_ssl", [1.0, 2.1, 1.5], [2.0, 2.5, 2.2]) == "within spread"
    assert verdict("fd_ssl", [1.0], [2.0]) == "—"  # one seed: no spread to be outside of
    # a diversity of 0.9 (0.1 from the ideal) beats 1.5 (0.5 from it), though it is the smaller number
    assert verdict("diversity_ratio", [0.9, 0.95], [1.5, 1.6]) == "better"
    assert verdict("ms_ssim_synthetic", [0.1, 0.2], [0.5, 0.6]) == "—"


def test_compare_on_phantoms_with_held_out_real_and_floor(ray_local, tmp_path, capsys):
    """The controlled comparison's path: phantom shards for training, a held-out phantom set as the real reference,
    a second one as the floor; the table carries the floor, each variant's quality_vs_floor, its seconds per iteration
    and peak memory, and the verdict column against hagan."""
    from crfgan.config import load_config
    from pipelines.cli import main as cli_main
    from pipelines.preprocess import run

    cfg = load_config("tiny", ["data.val_fraction=0"])
    sets = {}
    for name, n, seed in (("train", 6, 0), ("real", 3, 1), ("floor", 3, 2)):
        sets[name] = str(tmp_path / name)
        run([f"phantom://{n}?size=32&seed={seed}"], sets[name], cfg)
    out = tmp_path / "cmp"
    rc = cli_main(["compare", "--data", sets["train"], "--real", sets["real"], "--floor", sets["floor"],
                   "--out", str(out), "--seeds", "0,1", "--volumes", "3", "--variants", "crfgan-ref,hagan",
                   "--config", "tiny", "train.iterations=2", "train.log_every=1", "train.checkpoint_every=2",
                   "eval.ssl_steps=5"])
    assert rc == 0, capsys.readouterr().out
    doc = json.loads((out / "compare.json").read_text())
    assert doc["budget"]["real"] == sets["real"] and doc["budget"]["baseline"] == "hagan"
    for seed in ("0", "1"):
        m = doc["per_seed"][seed]
        assert set(m) == {"crfgan-ref", "hagan", "real-floor"} and m["real-floor"]["quality_vs_floor"] == 1.0
        for v in ("crfgan-ref", "hagan"):
            assert m[v]["quality_vs_floor"] == m[v]["quality_score"] / m["real-floor"]["quality_score"]
            assert m[v]["n_real"] == 3  # the held-out set, not the 6 training phantoms
            r = json.loads((out / "runs" / f"{v}-s{seed}" / "result.json").read_text())
            assert r["iterations"] == 2 and r["s_per_iteration"] > 0 and r["peak_memory_mb"] > 50
    s = doc["summary"]["crfgan-ref"]
    assert s["quality_score"]["vs_hagan"] in ("better", "worse", "within spread")
    assert len(s["s_per_iteration"]["values"]) == 2 and all(x > 0 for x in s["s_per_iteration"]["values"])
    md = (out / "compare.md").read_text()
    assert "| crfgan-ref vs hagan |" in md and "| real-floor |" in md and "| quality_vs_floor |" in md
