"""Shapes at every size for both archs, and the reference parameter counts."""

import pytest
import torch

from crfgan.config import load_config
from crfgan.models import build_networks

SIZES = [32, 64, 128, 256, 512]


def shapes(cfg, device):
    s, m = cfg.model.image_size, cfg.model
    with torch.device(device):
        nets = build_networks(cfg)
        z = torch.randn(2, m.latent_dim)
        start = m.emb_size - m.emb_slab_depth  # the last valid start
        x, a = nets.g(z, start)
        assert a.shape == (2, m.emb_channels, m.emb_size, m.emb_size, m.emb_size)
        assert x.shape == (2, 1, s // 8, s, s)
        assert nets.d(x, s - s // 8).shape == (2, 1)
        assert nets.e(x).shape == (2, m.emb_channels, m.emb_slab_depth, m.emb_size, m.emb_size)
        if m.arch == "crfgan":
            assert nets.crf(a, torch.zeros(2, 1)).shape == (2, 1)
        else:
            low = nets.g_low(a)
            assert low.shape == (2, 1, m.emb_size, m.emb_size, m.emb_size)
            assert nets.d_low(low).shape == (2, 1)
            assert nets.e_sub(a).shape == (2, m.latent_dim)


@pytest.mark.parametrize("arch", ["crfgan", "hagan"])
@pytest.mark.parametrize("size", SIZES)
def test_shapes_tiny_widths_every_size(arch, size):
    cfg = load_config("tiny", [f"model.image_size={size}", f"model.arch={arch}"])
    shapes(cfg, "cpu" if size <= 64 else "meta")  # meta: shapes without the compute


@pytest.mark.parametrize("size", [64, 128])
def test_shapes_with_an_s8_embedding(size):
    cfg = load_config("tiny", [f"model.image_size={size}", f"model.embedding_size={size // 8}"])
    shapes(cfg, "cpu")


@pytest.mark.parametrize("preset,arch,millions", [
    ("ct128", "crfgan", 57.21), ("ct128", "hagan", 79.58), ("ct256", "crfgan", 57.24), ("ct256", "hagan", 79.74),
])
def test_reference_parameter_counts(preset, arch, millions):
    cfg = load_config(preset, [f"model.arch={arch}"])
    with torch.device("meta"):
        counts = build_networks(cfg).param_counts()
    assert round(sum(counts.values()) / 1e6, 2) == millions
    assert 52.3e6 < counts["g"] < 52.5e6  # G ≈ 52.4 M: the first Linear and the 512-channel convs


@pytest.mark.parametrize("preset", ["ct64", "ct128", "ct256", "ct512"])
def test_reference_widths_shapes(preset):
    shapes(load_config(preset), "meta")
    shapes(load_config(preset, ["model.arch=hagan"]), "meta")


@pytest.mark.parametrize("arch", ["crfgan", "hagan"])
def test_conditional_networks_take_a_one_hot_class_and_give_class_logits(arch):
    """HA-GAN's num_class mode: z ⊕ one-hot(K) into G^A's Linear, D^H a K-way class head, D^L 1 + K outputs."""
    k = 3
    cfg = load_config("tiny", [f"model.arch={arch}", f"model.num_classes={k}"])
    m = cfg.model
    nets = build_networks(cfg)
    base = build_networks(load_config("tiny", [f"model.arch={arch}"]))
    assert nets.g.embedding.fc.in_features == m.latent_dim + k
    z, cls = torch.randn(2, m.latent_dim), torch.tensor([0, 2])
    x, a = nets.g(z, 0, cls)
    assert x.shape == (2, 1, 4, 32, 32)
    assert nets.d(x, 0).shape == (2, 1 + k)
    extra = nets.param_counts()["d"] - base.param_counts()["d"]
    assert extra == (m.d_channels // 8 + 1) * k  # the class head: fc(C/8 → K) weights and biases
    if arch == "hagan":
        assert nets.d_low(nets.g_low(a)).shape == (2, 1 + k)
    with pytest.raises(ValueError, match="pass class_index"):
        nets.g(z, 0)
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        nets.g(z, 0, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="unconditional"):
        base.g(z, 0, cls)


@pytest.mark.parametrize("overrides", [[], ["model.embedding_size=8"]])  # E = S/4 (2 G^H stages) and S/8 (3)
def test_fused_upsampling_renders_what_the_two_step_generator_renders(overrides):
    """model.fused_upsample: one generator, the same parameters, both paths: sub-volume, A, whole-volume render."""
    base = ["model.latent_dim=16", "model.base_channels=8", *overrides]
    fused, plain = (build_networks(load_config("ct64", [*base, f"model.fused_upsample={f}"])).g for f in (True, False))
    plain.load_state_dict(fused.state_dict())  # same keys: checkpoints are shared
    torch.manual_seed(0)
    z = torch.randn(2, 16)
    with torch.no_grad():
        (xf, af), (xp, ap) = fused(z, 2), plain(z, 2)
        assert torch.allclose(af, ap, atol=1e-5) and torch.allclose(xf, xp, atol=1e-5)
        assert torch.allclose(fused.render(z), plain.render(z), atol=1e-5)
    # gradients in float64: in float32 GroupNorm's 1/σ amplifies the rounding of one path or the other (seen: 2e-4
    # of the largest entry with some initialisations, 3e-6 with others); in float64 the two agree to 1e-12
    fused, plain, z = fused.double(), plain.double(), z.double()
    gf = torch.autograd.grad(fused(z, 2)[0].square().sum(), fused.embedding.blocks[2][0].weight)[0]
    gp = torch.autograd.grad(plain(z, 2)[0].square().sum(), plain.embedding.blocks[2][0].weight)[0]
    assert torch.allclose(gf, gp, atol=1e-12 * float(gp.abs().max()), rtol=0)
