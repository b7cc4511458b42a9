import dataclasses
import math

import numpy as np
import pytest
import torch

from crfgan.config import load_config
from crfgan.models import apply_execution_options, build_networks, build_optimizers
from crfgan.step import real_sub_volume, sample_start, train_step


def run(overrides, steps=2, size=32):
    cfg = load_config("tiny", [f"model.image_size={size}", *overrides])
    torch.manual_seed(0)
    nets = apply_execution_options(cfg, build_networks(cfg))
    opts = build_optimizers(cfg, nets)
    real = torch.rand(2, 1, size, size, size) * 2 - 1
    labels = torch.tensor([0, cfg.model.num_classes - 1]) if cfg.model.num_classes else None
    before = {n: [p.detach().clone() for p in m.parameters()] for n, m in nets.items()}
    rng = np.random.default_rng(0)
    outs = [train_step(nets, opts, real, it, cfg, rng, labels=labels) for it in range(steps)]
    changed = {n: any(not torch.equal(p, q) for p, q in zip(before[n], m.parameters())) for n, m in nets.items()}
    return outs, changed


@pytest.mark.parametrize("overrides,losses", [
    (["model.arch=crfgan"], {"d_loss", "g_loss", "crf_loss", "e_loss"}),
    (["model.arch=crfgan", "train.share_fakes=false"], {"d_loss", "g_loss", "crf_loss", "e_loss"}),
    (["model.arch=crfgan", "model.crf.nodes=channels"], {"d_loss", "g_loss", "crf_loss", "e_loss"}),
    (["model.arch=hagan"], {"d_loss", "g_loss", "e_loss", "e_sub_loss"}),
    (["model.arch=crfgan", "train.amp=bf16"], {"d_loss", "g_loss", "crf_loss", "e_loss"}),
    (["model.arch=crfgan", "model.num_classes=3", "train.share_fakes=false"],
     {"d_loss", "g_loss", "crf_loss", "e_loss", "d_class", "g_class"}),
    (["model.arch=hagan", "model.num_classes=2"], {"d_loss", "g_loss", "e_loss", "e_sub_loss", "d_class", "g_class"}),
])
def test_every_sub_step_runs_and_trains_its_networks(overrides, losses):
    outs, changed = run(overrides)
    assert losses <= set(outs[-1])
    assert all(math.isfinite(float(v)) for o in outs for v in o.values()), outs
    assert all(changed.values()), changed  # every network's optimizer stepped


@pytest.mark.parametrize("option", ["model.activation_checkpointing=true", "train.channels_last=true"])
def test_execution_options_give_the_same_step(option):
    """Activation checkpointing and channels_last change how the step runs, not what it computes."""
    a, _ = run(["train.share_fakes=true"], steps=1)
    b, _ = run([option], steps=1)
    assert all(torch.allclose(a[0][k], b[0][k], atol=1e-4) for k in a[0])


@pytest.mark.slow
def test_compiled_networks_give_the_same_step():
    a, _ = run([], steps=1)
    b, _ = run(["train.compile=true"], steps=1)
    assert all(torch.allclose(a[0][k], b[0][k], atol=1e-3) for k in a[0])


@pytest.mark.parametrize("size", [32, 64, 128])
def test_real_and_rendered_sub_volumes_cover_the_same_slices(size):
    cfg = load_config("tiny", [f"model.image_size={size}"])
    m = cfg.model
    real = torch.arange(size, dtype=torch.float32).view(1, 1, size, 1, 1).expand(1, 1, size, size, size)
    per_emb = size // m.emb_size  # image slices per embedding slice
    for start in range(m.emb_size - m.emb_slab_depth + 1):
        slab, pos = real_sub_volume(real, start, cfg)
        assert slab.shape[2] == m.slab_depth
        # G^H renders embedding slices [start, start + e) into image slices [start·per_emb, (start + e)·per_emb)
        assert slab[0, 0, :, 0, 0].tolist() == list(range(start * per_emb, (start + m.emb_slab_depth) * per_emb))
        assert pos == start * per_emb


def test_sampled_starts_cover_every_valid_start():
    cfg = load_config("tiny", ["model.image_size=64"])
    rng = np.random.default_rng(0)
    starts = {sample_start(rng, cfg) for _ in range(500)}
    m = cfg.model
    assert starts == set(range(m.emb_size - m.emb_slab_depth + 1))


def test_a_conditional_step_needs_labels():
    cfg = load_config("tiny", ["model.num_classes=2"])
    nets = build_networks(cfg)
    with pytest.raises(AssertionError, match="labels"):
        train_step(nets, build_optimizers(cfg, nets), torch.zeros(2, 1, 32, 32, 32), 0, cfg, np.random.default_rng(0))


def test_the_class_loss_decreases_on_a_toy_task():
    """Two classes that differ plainly (dark vs bright volumes): D's class head learns them within a few dozen steps."""
    cfg = load_config("tiny", ["model.num_classes=2"])
    torch.manual_seed(0)
    nets = build_networks(cfg)
    opts = build_optimizers(cfg, nets)
    rng = np.random.default_rng(0)
    labels = torch.tensor([0, 1])
    hist = []
    for it in range(40):
        noise = torch.rand(2, 1, 32, 32, 32) * 0.2
        real = torch.cat([noise[:1] - 0.9, noise[1:] + 0.7])  # class 0 dark, class 1 bright
        hist.append(float(train_step(nets, opts, real, it, cfg, rng, labels=labels)["d_class"]))
    first, last = np.mean(hist[:5]), np.mean(hist[-5:])
    assert last < 0.5 * first, (first, last)


class Recorder(torch.nn.Module):
    """Stands in for a DDP wrapper: shares the module's parameters and counts its calls."""

    def __init__(self, module, calls, name):
        super().__init__()
        self.module, self.calls, self.name = module, calls, name

    def forward(self, *args, **kwargs):
        self.calls[self.name] = self.calls.get(self.name, 0) + 1
        return self.module(*args, **kwargs)


@pytest.mark.parametrize("arch,share", [("crfgan", False), ("crfgan", True), ("hagan", False)])
def test_each_sub_step_calls_the_given_module_only_for_the_network_it_trains(arch, share):
    cfg = load_config("tiny", [f"model.arch={arch}", f"train.share_fakes={share}"])
    torch.manual_seed(0)
    nets = build_networks(cfg)
    opts = build_optimizers(cfg, nets)
    calls: dict = {}
    call = dataclasses.replace(nets, **{n: Recorder(m, calls, n) for n, m in nets.items()})
    train_step(nets, opts, torch.rand(2, 1, 32, 32, 32) * 2 - 1, 0, cfg, np.random.default_rng(0), call=call)
    # one call per network per iteration: the sub-step that trains it (G: its D-step forward when fakes are shared)
    assert calls == {n: 1 for n, _ in nets.items()}, calls
