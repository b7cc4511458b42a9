"""The benchmarks run and report sane figures (no wall-clock limits: speed is measured, not asserted)."""

import json
from types import SimpleNamespace

import pytest

from pipelines.bench import render, train_step


def test_train_step_bench_reports_every_arch_and_the_ratios(tmp_path, capsys):
    out = tmp_path / "ts.json"
    args = SimpleNamespace(size="32", batch=2, arch="crfgan,hagan", variants="shared,reference-seq", iters=1,
                           device="cpu", amp="none", checkpointing=False, json=str(out))
    train_step.run(args)
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    assert [(r["arch"], r["variant"]) for r in rows] == [("crfgan", "shared"), ("crfgan", "reference-seq"),
                                                         ("hagan", "reference-seq")]
    assert all(r["s_per_iter"] > 0 and r["peak_mb"] > 0 and r["peak_rss_mb"] >= r["peak_mb"] for r in rows)
    assert rows[0]["params_m"] < rows[2]["params_m"]  # HA-GAN carries G^L, D^L and E^G on top
    names = {r["ratio"] for r in doc["ratios"]}
    assert "crfgan/hagan peak memory" in names and "crfgan reference-seq/shared s per iter (speed-up)" in names
    assert "| crfgan" in capsys.readouterr().out


def test_render_bench_tiled_matches_one_pass_with_less_memory(tmp_path):
    out = tmp_path / "r.json"
    render.run(SimpleNamespace(size="64", slab=2, halo=1, device="cpu", no_compare=False, json=str(out)))
    rows = {r["mode"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"one-pass", "tiled-global", "tiled-slab"}
    assert rows["tiled-global"]["max_abs_diff"] <= 1e-5
    assert rows["tiled-slab"]["max_abs_diff"] > 1e-4  # per-slab statistics are a different render


@pytest.mark.slow
def test_512_renders_tiled_within_this_machine():
    """512³ at reference widths: the one-pass render would need ~20 GB of activations; the tiled one does not."""
    r = render.measure({"size": 512, "mode": "tiled-global", "slab": 4, "halo": 1, "device": "cpu", "compare": False})
    assert r["output_mb"] == 512**3 * 4 / 2**20
    assert r["peak_mb"] < 24 * 1024
