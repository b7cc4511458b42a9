"""The training stabilisers (instance noise, R1, EMA of G, D's minibatch stddev): off by default and in the presets,
and each does what it says (crfgan/step.py, crfgan/discriminator.py)."""

import numpy as np
import pytest
import torch

from crfgan.checkpoint import load_checkpoint, load_generator, save_checkpoint
from crfgan.config import ConfigError, load_config, preset_names
from crfgan.models import build_networks, build_optimizers
from crfgan.step import ema_decay_at, instance_noise_sigma, real_sub_volume, train_step
from crfgan.trainer import train_local

SIZE = 32


def setup(overrides, seed=0):
    cfg = load_config("tiny", ["train.share_fakes=false", *overrides])
    torch.manual_seed(seed)
    nets = build_networks(cfg)
    return cfg, nets, build_optimizers(cfg, nets)


def real_batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 1, SIZE, SIZE, SIZE, generator=g) * 2 - 1


def step_once(overrides, iteration=0, start=1):
    """One step from identical weights, noise and data; returns (outputs, D's parameters after)."""
    cfg, nets, opts = setup(overrides)
    torch.manual_seed(5)
    out = train_step(nets, opts, real_batch(), iteration, cfg, np.random.default_rng(0), start=start)
    return out, [p.detach().clone() for p in nets.d.parameters()], nets


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_leaves_the_stabilisers_off(preset):
    t = load_config(preset).train
    assert (t.instance_noise, t.r1_gamma, t.ema_decay) == (0.0, 0.0, 0.0)
    assert load_config(preset).model.d_minibatch_std == 0
    assert build_networks(load_config("tiny")).g_ema is None


@pytest.mark.parametrize("override,key", [
    ("train.instance_noise=-0.1", "train.instance_noise"), ("train.instance_noise_iters=0", "train.instance_noise_iters"),
    ("train.r1_gamma=-1", "train.r1_gamma"), ("train.r1_every=0", "train.r1_every"),
    ("train.ema_decay=1.0", "train.ema_decay"), ("train.ema_decay=-0.5", "train.ema_decay"),
    ("model.d_minibatch_std=1", "model.d_minibatch_std"), ("model.d_minibatch_std=-2", "model.d_minibatch_std"),
    ("model.d_minibatch_std=3", "model.d_minibatch_std"),  # does not divide train.batch_size=2 (tiny)
])
def test_bad_stabiliser_settings_are_refused_by_name(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config("tiny", [override])


def test_instance_noise_sigma_anneals_linearly_to_zero():
    t = load_config("tiny", ["train.instance_noise=0.2", "train.instance_noise_iters=100"]).train
    assert instance_noise_sigma(t, 0) == pytest.approx(0.2)
    assert instance_noise_sigma(t, 25) == pytest.approx(0.15)
    assert instance_noise_sigma(t, 50) == pytest.approx(0.1)
    assert instance_noise_sigma(t, 100) == 0.0 and instance_noise_sigma(t, 5000) == 0.0
    assert instance_noise_sigma(load_config("tiny").train, 0) == 0.0


def test_instance_noise_changes_the_d_step_until_it_has_annealed():
    _, d_off, _ = step_once([])
    out, d_on, _ = step_once(["train.instance_noise=0.3", "train.instance_noise_iters=100"], iteration=10)
    assert float(out["noise_sigma"]) == pytest.approx(0.27)
    assert not same(d_off, d_on)
    out, d_done, _ = step_once(["train.instance_noise=0.3", "train.instance_noise_iters=100"], iteration=100)
    _, d_off100, _ = step_once([], iteration=100)
    assert "noise_sigma" not in out and same(d_off100, d_done)  # sigma 0: exactly the plain step


def test_r1_is_the_squared_input_gradient_of_d_on_real_and_changes_d_gradient():
    cfg, nets, _ = setup([])
    real = real_batch()
    slab, pos = real_sub_volume(real, 1, cfg)
    x = slab.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(nets.d(x, pos)[:, 0].sum(), x)
    expected = float(grad.pow(2).flatten(1).sum(1).mean())  # from D's initial weights, as the step sees them

    _, d_plain, _ = step_once([])
    _, d_zero, _ = step_once(["train.r1_gamma=0"])
    out, d_r1, _ = step_once(["train.r1_gamma=10"])
    assert same(d_plain, d_zero)  # gamma 0: no penalty at all
    assert float(out["r1"]) == pytest.approx(expected, rel=1e-4) and expected > 0
    assert not same(d_plain, d_r1)
    # the G step and the rest see the same D only if R1 did nothing: it did
    out_p, _, _ = step_once([])
    assert float(out["d_loss"]) == pytest.approx(float(out_p["d_loss"]) + 5 * expected, rel=1e-4)


def test_lazy_r1_applies_every_kth_step_scaled_by_k():
    out1, d1, _ = step_once(["train.r1_gamma=2", "train.r1_every=4"], iteration=1)
    _, d_plain, _ = step_once([], iteration=1)
    assert "r1" not in out1 and same(d1, d_plain)
    out4, _, _ = step_once(["train.r1_gamma=2", "train.r1_every=4"], iteration=4)
    out4_eager, _, _ = step_once(["train.r1_gamma=2"], iteration=4)
    plain = float(step_once([], iteration=4)[0]["d_loss"])
    assert float(out4["d_loss"]) - plain == pytest.approx(4 * (float(out4_eager["d_loss"]) - plain), rel=1e-4)


def test_r1_runs_for_hagan_through_both_discriminators():
    out, _, _ = step_once(["model.arch=hagan", "train.r1_gamma=1"])
    assert float(out["r1"]) > 0 and np.isfinite(float(out["d_loss"]))


def test_ema_starts_at_g_and_moves_toward_it_by_its_decay():
    cfg, nets, opts = setup(["train.ema_decay=0.9"])
    assert nets.g_ema is not None and nets.eval_generator() is nets.g_ema
    assert same(nets.g.parameters(), nets.g_ema.parameters())
    assert not any(p.requires_grad for p in nets.g_ema.parameters())
    rng = np.random.default_rng(0)
    real = real_batch()
    for it in range(6):
        ema_before = [p.clone() for p in nets.g_ema.parameters()]
        train_step(nets, opts, real, it, cfg, rng)
        d = ema_decay_at(cfg.train, it)
        for e0, e1, g in zip(ema_before, nets.g_ema.parameters(), nets.g.parameters()):
            torch.testing.assert_close(e1, d * e0 + (1 - d) * g, rtol=1e-5, atol=1e-7)
    assert ema_decay_at(cfg.train, 0) == pytest.approx(0.1) and ema_decay_at(cfg.train, 10_000) == 0.9
    gap = sum(float((e - g).detach().abs().sum()) for e, g in zip(nets.g_ema.parameters(), nets.g.parameters()))
    assert gap > 0  # an average, not a copy


def test_ema_resumes_exactly_and_is_what_the_run_exports(tmp_path):
    vols = np.stack([real_batch()[i, 0].numpy() for i in range(2)])
    over = ["train.ema_decay=0.99", "train.log_every=3", "train.checkpoint_every=3", "train.share_fakes=false"]

    def cfg(n):
        return load_config("tiny", [f"train.iterations={n}", *over])

    full = train_local(cfg(6), vols, tmp_path / "a", log=lambda s: None)
    train_local(cfg(3), vols, tmp_path / "b", log=lambda s: None)
    resumed = train_local(cfg(6), vols, tmp_path / "b", log=lambda s: None)
    assert same(full.nets.g_ema.parameters(), resumed.nets.g_ema.parameters())
    assert not same(resumed.nets.g.parameters(), resumed.nets.g_ema.parameters())
    exported = load_generator(tmp_path / "b" / "generator")
    assert same(exported.parameters(), resumed.nets.g_ema.parameters())
    from_ckpt = load_generator(tmp_path / "b" / "checkpoint_000006")
    assert same(from_ckpt.parameters(), resumed.nets.g_ema.parameters())


def test_switching_ema_on_when_resuming_a_run_without_it_starts_the_average_at_g(tmp_path):
    cfg0, nets0, opts0 = setup([])
    train_step(nets0, opts0, real_batch(), 0, cfg0, np.random.default_rng(0))
    save_checkpoint(tmp_path / "ck", cfg0, nets0, opts0, 1)
    cfg1, nets1, opts1 = setup(["train.ema_decay=0.9"], seed=3)
    load_checkpoint(tmp_path / "ck", "cpu", nets1, opts1)
    assert same(nets1.g_ema.parameters(), nets0.g.parameters())


def test_minibatch_std_gives_d_the_spread_of_each_group_and_never_mixes_real_with_fake():
    from crfgan.discriminator import minibatch_std

    g = torch.Generator().manual_seed(0)
    spread = torch.randn(2, 3, 1, 4, 4, generator=g)  # a group of 2 distinct inputs
    same_twice = spread[:1].repeat(2, 1, 1, 1, 1)  # a collapsed group: one input twice
    out = minibatch_std(torch.cat([spread, same_twice]), 2)
    assert out.shape == (4, 4, 1, 4, 4) and torch.equal(out[:, :3], torch.cat([spread, same_twice]))
    expected = spread.var(dim=0, unbiased=False).add(1e-8).sqrt().mean()
    assert torch.allclose(out[:2, 3], expected.expand(2, 1, 4, 4))
    assert out[2:, 3].max() < 1e-3  # the collapsed group reads ~0; the first group's value is not mixed in
    with pytest.raises(ValueError, match="not a multiple"):
        minibatch_std(torch.cat([spread, spread[:1]]), 2)


def test_minibatch_std_changes_d_and_trains():
    cfg, nets, _ = setup(["model.d_minibatch_std=2"])
    assert nets.d.tail[-1].weight.shape[1] == cfg.model.d_channels + 1
    out, _, _ = step_once(["model.d_minibatch_std=2"])
    assert all(torch.isfinite(v).all() for v in out.values())
    _, _, nets_off = step_once([])
    assert nets_off.d.tail[-1].weight.shape[1] == cfg.model.d_channels
