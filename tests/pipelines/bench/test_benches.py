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
    assert "| crfgan" in printed and "published" not in printed  # only what this run measured (no --published)


STAND_IN = """
import torch
from torch import nn

class Generator(nn.Module):  # the published interface: G(z, crop_idx, class_label, crf_need), G(h, crop_idx=None)
    def __init__(self, mode="train", latent_dim=1024, num_class=0):
        super().__init__()
        self.fc, self.up = nn.Linear(latent_dim, 2 * 4 * 4 * 4), nn.Conv3d(2, 1, 3, padding=1)

    def forward(self, h, crop_idx=None, class_label=None, crf_need=False):
        if crop_idx is not None:
            a = self.fc(h).view(-1, 2, 4, 4, 4)
            h = a[:, :, :1]
        out = self.up(nn.functional.interpolate(h[:, :2], size=(8, 64, 64)))
        return (out, a) if crf_need else out

class Discriminator(nn.Module):
    def __init__(self, num_class=0):
        super().__init__()
        self.fc = nn.Linear(2, 1)

    def forward(self, h, crop_idx):
        m = h.mean(dim=(1, 2, 3, 4))[:, None]
        return self.fc(torch.cat([m, (crop_idx / 56. * torch.ones((h.size(0), 1))).cuda()], 1))

class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 2, (8, 16, 16), stride=(8, 16, 16))

    def forward(self, h):
        return self.conv(h)

class CRF(nn.Module):
    def __init__(self, num_nodes, iteration=10):
        super().__init__()
        self.W = nn.Parameter(torch.zeros(1, 2, 2))

    def forward(self, a, logits):
        return logits + a.mean() * self.W.sum()
"""


def test_train_step_bench_times_a_published_checkout_beside_our_reference_step(tmp_path):
    """--published: a stand-in written here with the published code's interface (its real code is fetched at bench
    time, never shipped), including its ``.cuda()`` call inside D.forward, runs on the CPU beside our two rows."""
    root = tmp_path / "CRF-GAN"
    (root / "models").mkdir(parents=True)
    (root / "models" / "__init__.py").write_text("")
    (root / "models" / "CRF_GAN_64.py").write_text(STAND_IN)
    out = tmp_path / "ts.json"
    args = SimpleNamespace(size="64", batch=2, arch="crfgan", variants="reference", iters=1, device="cpu",
                           amp="none", checkpointing=False, json=str(out), published=str(root))
    train_step.run(args)
    doc = json.loads(out.read_text())
    rows = {(r["arch"], r["options"]): r for r in doc["rows"]}
    assert set(rows) == {("crfgan", "fp32"), ("crfgan", "fp32-unfused"), ("published", "fp32")}
    assert rows[("published", "fp32")]["params_m"] < 0.2 < rows[("crfgan", "fp32")]["params_m"]  # the stand-in's nets
    assert rows[("crfgan", "fp32")]["params"] == rows[("crfgan", "fp32-unfused")]["params"]  # one model, two paths
    ratios = {r["compares"]: r for r in doc["ratios"]}
    pub = ratios["crfgan reference fp32 vs the published code (same step sequence and widths; fused upsampling)"]
    assert pub["speed_up"] == rows[("published", "fp32")]["s_per_iter"] / rows[("crfgan", "fp32")]["s_per_iter"]
    assert "crfgan reference: fp32 vs fp32-unfused (same function, fused upsampling)" in ratios
    assert not any("hagan" in k for k in ratios)


def test_train_step_bench_refuses_a_published_source_it_cannot_use(tmp_path):
    from pipelines.bench import published

    (tmp_path / "co" / "models").mkdir(parents=True)
    with pytest.raises(SystemExit, match="CRF_GAN_128.py is missing"):
        published.locate(str(tmp_path / "co"), [128], tmp_path / "cache")
    with pytest.raises(SystemExit, match="cloning it failed"):  # a local path that is no repository: no network
        published.locate(str(tmp_path / "nothing-here"), [64], tmp_path / "cache")
    with pytest.raises(SystemExit, match="models at"):
        published.locate(str(tmp_path / "co"), [32], tmp_path / "cache")


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
