"""One CRF-GAN (or HA-GAN) training iteration as a plain function over networks and optimizers.

The four CRF-GAN sub-steps (ARCHITECTURE.md, after the reference train.py):
  1. D:   real sub-volume vs G(z) rendered at the same slices → BCE.
  2. G:   BCE(w·CRF(A, D(fake)) + (1−w)·D(fake), real), w decaying linearly to 0.
  3. CRF: CRF(E(x_full), D(x_real)) → real, CRF(A_fake, D(fake)) → fake; only W trains.
  4. E:   L1(G^H(E(x_real_slab)), x_real_slab).
HA-GAN instead adds G^L/D^L to steps 1–2 (the logit is the mean of D^H and D^L) and trains the sub-encoder E^G
by reconstruction; it has no CRF.

Speed (``train.share_fakes``, default on): the reference runs G^A — most of the model's compute — forward
three times per iteration with three noise draws. Here one forward of G (with its graph kept) feeds the D step
(detached), the G step (through the freshly updated D, whose weights are what the G step must see) and the CRF
step's fake branch (detached A and the G step's D(fake), computed by the same D the CRF step would use). Each
sub-step still optimises the same objective; the CRF's fakes come from G before its update instead of after.
``share_fakes: false`` runs the reference sequence (fresh noise per sub-step) for comparison.

DDP: every network is wrapped on its own. A sub-step calls the *wrapper* only of the networks it trains and
the bare module (``raw``) of the frozen ones, so no wrapper ever waits for gradients that never come.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from .config import Config
from .hagan import low_res
from .losses import bce, crf_weight, l1
from .models import Networks, Optimizers


def raw(m: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return getattr(m, "module", m)


@contextlib.contextmanager
def frozen(*modules):
    """Parameters of ``modules`` need no gradients inside the block (inputs still get theirs)."""
    params = [p for m in modules if m is not None for p in raw(m).parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


class Amp:
    """Autocast + (for fp16) one GradScaler shared by the sub-steps, per the PyTorch multi-optimizer recipe."""

    def __init__(self, mode: str, device: torch.device):
        self.mode, self.device_type = mode, device.type
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)
        self.scaler = torch.amp.GradScaler(self.device_type) if mode == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def step(self, loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
        """Backward and update; gradients are freed right after, so only one network's exist at a time
        (on CPU this relies on ``crfgan.memory.pin_mmap_threshold`` to hand the freed buffers back to the OS)."""
        opt.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(opt)
        opt.zero_grad(set_to_none=True)

    def end(self) -> None:
        if self.scaler is not None:
            self.scaler.update()


def sample_start(rng: np.random.Generator, cfg: Config) -> int:
    """A random sub-volume start in embedding slices (position in image slices = start · S/E)."""
    m = cfg.model
    return int(rng.integers(0, m.emb_size - m.emb_slab_depth + 1))


def real_sub_volume(real: torch.Tensor, start: int, cfg: Config) -> tuple[torch.Tensor, int]:
    """The real sub-volume covering exactly the axial slices G^H renders from embedding slices [start, start+e)."""
    m = cfg.model
    pos = start * m.image_size // m.emb_size  # first axial slice
    return real[:, :, pos : pos + m.slab_depth], pos  # (B, 1, S/8, S, S)


def train_step(
    nets: Networks,
    opts: Optimizers,
    real: torch.Tensor,
    iteration: int,
    cfg: Config,
    rng: np.random.Generator,
    amp: Amp | None = None,
    start: int | None = None,
) -> dict[str, torch.Tensor]:
    """One iteration on a batch of whole real volumes ``real`` (B, 1, S, S, S) in [-1, 1].

    Returns detached scalar losses (call ``.item()`` only when logging: it synchronises a GPU).
    """
    m, t = cfg.model, cfg.train
    amp = amp or Amp(t.amp, real.device)
    b, s = real.shape[0], m.image_size
    assert real.shape[1:] == (1, s, s, s), f"real volumes must be (B, 1, {s}, {s}, {s}), got {tuple(real.shape)}"
    start = sample_start(rng, cfg) if start is None else start
    if t.channels_last:
        real = real.contiguous(memory_format=torch.channels_last_3d)
    real_slab, pos = real_sub_volume(real, start, cfg)
    hagan = m.arch == "hagan"
    real_low = low_res(real, m.emb_size) if hagan else None
    g, d, e = nets.g, nets.d, nets.e

    def noise():
        return torch.randn(b, m.latent_dim, device=real.device)

    def d_logit(disc, x, x_low, d_low):
        h = disc(x, pos)
        return (h + d_low(x_low)) / 2 if hagan else h

    # 1. D ----------------------------------------------------------------------------------------------
    with amp.autocast():
        with contextlib.nullcontext() if t.share_fakes else torch.no_grad():
            # shared: G's graph is kept for the G step; reference: a no-grad sample of its own
            gen, gen_low = (g, nets.g_low) if t.share_fakes else (raw(g), raw(nets.g_low))
            fake_slab, a = gen(noise(), start)
            fake_low = gen_low(a) if hagan else None
        both = torch.cat([real_slab, fake_slab.detach()])  # one D forward for real and fake
        both_low = torch.cat([real_low, fake_low.detach()]) if hagan else None
        logits = d_logit(d, both, both_low, nets.d_low)
        d_real, d_fake = logits[:b], logits[b:]
        d_loss = bce(d_real, 1.0) + bce(d_fake, 0.0)
    amp.step(d_loss, opts["d"])
    out = {"d_loss": d_loss.detach(), "d_real": d_real.detach().mean(), "d_fake": d_fake.detach().mean()}

    # 2. G ----------------------------------------------------------------------------------------------
    with frozen(d, nets.d_low, nets.crf), amp.autocast():
        if not t.share_fakes:
            fake_slab, a = g(noise(), start)
            fake_low = nets.g_low(a) if hagan else None
        d_fake_g = d_logit(raw(d), fake_slab, fake_low, raw(nets.d_low) if hagan else None)
        if hagan:
            y = d_fake_g
        else:
            w = crf_weight(t, iteration)
            crf_fake_g = raw(nets.crf)(a, d_fake_g)
            y = w * crf_fake_g + (1 - w) * d_fake_g
            out["crf_weight"] = torch.tensor(w)
        g_loss = bce(y, 1.0)
    amp.step(g_loss, opts["g"])
    out["g_loss"] = g_loss.detach()
    del fake_slab

    # 3. CRF (CRF-GAN) ----------------------------------------------------------------------------------
    if not hagan:
        with torch.no_grad(), amp.autocast():
            a_real = raw(e)(real)  # E(x_full): the real volume's embedding, (B, Ce, E, E, E)
            d_real_c = raw(d)(real_slab, pos)  # D after its update, as the reference
            if t.share_fakes:
                a_fake, d_fake_c = a.detach(), d_fake_g.detach()
            else:
                fake_c, a_fake = raw(g)(noise(), start)
                d_fake_c = raw(d)(fake_c, pos)
        with amp.autocast():
            y_crf = nets.crf(torch.cat([a_real, a_fake]), torch.cat([d_real_c, d_fake_c]))  # one CRF forward
            crf_loss = bce(y_crf[:b], 1.0) + bce(y_crf[b:], 0.0)
        amp.step(crf_loss, opts["crf"])
        out["crf_loss"] = crf_loss.detach()
        del a_real, a_fake
    del a

    # 4. E ----------------------------------------------------------------------------------------------
    with frozen(g), amp.autocast():
        rec = raw(g).renderer(e(real_slab))  # G^H(E(x_slab))
        e_loss = l1(rec, real_slab)
    amp.step(e_loss, opts["e"])
    out["e_loss"] = e_loss.detach()

    # 5. E^G (HA-GAN): z from the encoder's slab embeddings, reconstructed through G and G^L ------------
    if hagan:
        with torch.no_grad(), amp.autocast():
            step = m.slab_depth
            a_hat = torch.cat([raw(e)(real[:, :, i : i + step]) for i in range(0, s, step)], dim=2)
        with frozen(g, nets.g_low), amp.autocast():
            rec_slab, a_rec = raw(g)(nets.e_sub(a_hat), start)
            rec_low = raw(nets.g_low)(a_rec)
            sub_loss = (l1(rec_slab, real_slab) + l1(rec_low, real_low)) / 2
        amp.step(sub_loss, opts["e_sub"])
        out["e_sub_loss"] = sub_loss.detach()
    amp.end()
    return out
