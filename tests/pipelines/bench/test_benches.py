"""The benchmarks run and report sane figures (no wall-clock limits: speed is measured, not asserted)."""

import json
from types import SimpleNamespace

import pytest

from pipelines.bench import render, train_step


def test_train_step_bench_compares_like_for_like_and_labels_the_rest(tmp_path, capsys):
    out = tmp_path / "ts.json"
    args = SimpleNamespace(size="32", batch=2, arch="crfgan,hagan", variants="reference,shared", iters=1,
                           device="cpu", amp="none", checkpointing=True, json=str(out))
    train_step.run(args)
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    cases = [(r["arch"], r["variant"], r["options"]) for r in rows]
    assert cases == [(a, v, o) for o in ("fp32", "fp32+ckpt") for v in ("reference", "shared") for a in ("crfgan", "hagan")]
    assert all(r["s_per_iter"] > 0 and r["peak_mb"] > 0 and r["peak_rss_mb"] >= r["peak_mb"] for r in rows)
    assert rows[0]["params_m"] < rows[1]["params_m"]  # HA-GAN carries G^L, D^L and E^G on top
    ratios = {r["compares"]: r for r in doc["ratios"]}
    assert set(ratios) == {
        "crfgan vs hagan, both reference fp32 (like for like)", "crfgan vs hagan, both shared fp32 (like for like)",
        "crfgan vs hagan, both reference fp32+ckpt (like for like)", "crfgan vs hagan, both shared fp32+ckpt (like for like)",
        "crfgan shared vs reference, fp32 (algorithm change)", "crfgan shared vs reference, fp32+ckpt (algorithm change)",
        "hagan shared vs reference, fp32 (algorithm change)", "hagan shared vs reference, fp32+ckpt (algorithm change)",
        "crfgan reference: fp32+ckpt vs fp32 (same step)", "crfgan shared: fp32+ckpt vs fp32 (same step)",
        "hagan reference: fp32+ckpt vs fp32 (same step)", "hagan shared: fp32+ckpt vs fp32 (same step)",
        "crfgan reference fp32+ckpt vs hagan reference fp32 (different options)"}
    like = ratios["crfgan vs hagan, both reference fp32 (like for like)"]
    c, h = rows[0], rows[1]
    assert like["speed_up"] == h["s_per_iter"] / c["s_per_iter"] and like["peak_mem_ratio"] == c["peak_mb"] / h["peak_mb"]
    printed = capsys.readouterr().out
    assert "| crfgan" in printed and "published" not in printed  # only what this run measured


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
