import pytest
import torch

from crfgan.config import load_config
from crfgan.generator import Generator
from crfgan.render import render_one_pass, render_tiled, tiles


def generator(size, emb=0, seed=0):
    cfg = load_config("tiny", [f"model.image_size={size}", f"model.embedding_size={emb}"])
    torch.manual_seed(seed)
    return Generator(cfg.model).eval(), cfg


@pytest.mark.parametrize("size,emb", [(32, 0), (64, 0), (64, 8)])
@pytest.mark.parametrize("slab", [1, 3])
@pytest.mark.parametrize("halo", [1, 2])
def test_tiled_render_equals_one_pass(size, emb, slab, halo):
    g, cfg = generator(size, emb)
    with torch.no_grad():
        a = g.embedding(torch.randn(2, cfg.model.latent_dim))
        ref = render_one_pass(g.renderer, a)
        tiled = render_tiled(g.renderer, a, slab=slab, halo=halo, norm_stats="global")
    assert tiled.shape == ref.shape == (2, 1, size, size, size)
    assert (tiled - ref).abs().max().item() <= 1e-5


def test_per_slab_statistics_differ_from_one_pass():
    g, cfg = generator(32)
    with torch.no_grad():
        a = g.embedding(torch.randn(1, cfg.model.latent_dim))
        diff = (render_tiled(g.renderer, a, slab=2, halo=1, norm_stats="slab") - render_one_pass(g.renderer, a))
    assert diff.abs().max().item() > 1e-3  # what training sees is not the one-pass render


def test_zero_halo_is_not_exact():
    g, cfg = generator(32)
    with torch.no_grad():
        a = g.embedding(torch.randn(1, cfg.model.latent_dim))
        diff = render_tiled(g.renderer, a, slab=2, halo=0) - render_one_pass(g.renderer, a)
    assert diff.abs().max().item() > 1e-4  # the halo is what makes tiles exact


def test_tiles_cover_every_slice_once():
    kept = [i for t0, t1, _, _ in tiles(29, 4, 2) for i in range(t0, t1)]
    assert kept == list(range(29))
    assert all(h0 == max(t0 - 2, 0) and h1 == min(t1 + 2, 29) for t0, t1, h0, h1 in tiles(29, 4, 2))


def test_same_seed_same_volume():
    vols = []
    for _ in range(2):
        g, cfg = generator(32, seed=7)
        torch.manual_seed(123)
        vols.append(g.render(torch.randn(1, cfg.model.latent_dim), slab=2, halo=1))
    assert torch.equal(vols[0], vols[1])
    torch.manual_seed(124)
    assert not torch.equal(vols[0], g.render(torch.randn(1, cfg.model.latent_dim)))


def test_train_norm_stats_render_every_sub_volume_exactly_as_training():
    """norm_stats=train: E/8 embedding slices per tile, no halo, per-tile GroupNorm — G^H's training input."""
    from crfgan.config import load_config
    from crfgan.generator import Generator

    cfg = load_config("tiny", ["model.image_size=64"])
    torch.manual_seed(0)
    g = Generator(cfg.model).eval()
    z = torch.randn(1, cfg.model.latent_dim)
    with torch.no_grad():
        vol = g.render(z, norm_stats="train", slab=1, halo=1)  # slab and halo are fixed by the model here
        e, d = cfg.model.emb_slab_depth, cfg.model.slab_depth
        for k in range(cfg.model.emb_size // e):
            sub, _ = g(z, k * e)  # the training forward at start k·e
            assert torch.equal(vol[:, :, k * d : (k + 1) * d], sub)
