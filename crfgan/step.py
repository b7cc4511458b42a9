"""One CRF-GAN (or HA-GAN) training iteration as a plain function over networks and optimizers.

The four CRF-GAN sub-steps (ARCHITECTURE.md, after the reference train.py):
  1. D:   real sub-volume vs G(z) rendered at the same slices → BCE.
  2. G:   BCE(w·CRF(A, D(fake)) + (1−w)·D(fake), real), w decaying linearly to 0.
  3. CRF: CRF(E(x_full), D(x_real)) → real, CRF(A_fake, D(fake)) → fake; only W trains.
  4. E:   L1(G^H(E(x_real_slab)), x_real_slab).
HA-GAN instead adds G^L/D^L to steps 1–2 (the logit is the mean of D^H and D^L) and trains the sub-encoder E^G
by reconstruction; it has no CRF.

Shared fakes (``train.share_fakes``; off in the paper presets): the reference runs G^A — most of the model's
compute — forward three times per iteration with three noise draws. With sharing, one forward of G (its graph kept)
feeds the D step (detached), the G step and the CRF step's fake branch. That is an algorithm change, not the same
objective: G's step scores the very fakes D has just been updated on (the reference scores a fresh draw), and the
CRF step sees A and D(fake) from G *before* its update (the reference: after). ``share_fakes: false`` runs the
reference sequence; the evaluation's comparison measures what sharing costs in quality.

Stabilisers (``train.*``; all off by default and in the paper presets: they change the algorithm):
  - instance noise (``instance_noise`` = sigma0 > 0): N(0, sigma²) added to every input of D (and D^L) in the D and G
    steps, real and fake alike, sigma = sigma0 · max(0, 1 − i / ``instance_noise_iters``) (``instance_noise_sigma``).
    The CRF step's unaries come from D on clean inputs (with shared fakes, the fake one is the G step's).
  - R1 (``r1_gamma`` > 0): D's loss adds (gamma/2) · E‖∇_x D(x_real)‖² over D's real inputs (the noisy ones when
    instance noise is on; HA-GAN: the sub-volume and the low-res volume); lazy with ``r1_every`` = k: every k-th
    iteration, times k. R1 needs a double backward through D, so the D step with it costs more.
  - EMA of G (``ema_decay`` > 0): after each G step ``nets.g_ema`` ← lerp toward G's weights with decay
    min(``ema_decay``, (1 + i) / (10 + i)) (the warm-up lets a short run's average forget the initial weights);
    it never feeds training, only rendering (``Networks.eval_generator``).

Conditional generation (``model.num_classes`` = K > 0, HA-GAN's ``num_class`` mode): fakes are generated with the
real batch's classes; D's step adds the cross-entropy of its class head on the real sub-volume (weight 1, as the
reference), G's step adds ``lambda_class`` × the cross-entropy of D's class head on the fakes. The CRF's unary is
D's real/fake logit only.

Distributed: ``nets`` are the bare modules; ``call`` (default ``nets``) holds what to call for the network a
sub-step trains — under DDP its wrapper. Frozen networks are always called bare, so no wrapper ever waits for
gradients that never come. This module knows nothing about DDP beyond that.

Host synchronisation: none per iteration (on CUDA). Losses are returned as device tensors; call ``.item()`` or
``float()`` only when logging. (fp16's GradScaler checks for infs on the host: use bf16 for a sync-free step.)
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from .config import Config
from .discriminator import split_logits
from .hagan import low_res
from .losses import bce, crf_weight, l1
from .models import Networks, Optimizers


@contextlib.contextmanager
def frozen(*modules):
    """Parameters of ``modules`` need no gradients inside the block (inputs still get theirs)."""
    params = [p for m in modules if m is not None for p in m.parameters()]
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


def instance_noise_sigma(t, iteration: int) -> float:
    """The instance-noise sigma at ``iteration``: ``instance_noise`` falling linearly to 0 by ``instance_noise_iters``."""
    if t.instance_noise <= 0:
        return 0.0
    return t.instance_noise * max(0.0, 1.0 - iteration / t.instance_noise_iters)


def r1_due(t, iteration: int) -> bool:
    return t.r1_gamma > 0 and iteration % t.r1_every == 0


def ema_decay_at(t, iteration: int) -> float:
    return min(t.ema_decay, (1.0 + iteration) / (10.0 + iteration))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``ema`` ← decay · ema + (1 − decay) · model over parameters; buffers are copied."""
    ep, mp = list(ema.parameters()), [p.detach() for p in model.parameters()]
    if ep:
        torch._foreach_lerp_(ep, mp, 1.0 - decay)
    for b, mb in zip(ema.buffers(), model.buffers()):
        b.copy_(mb)


def sample_start(rng: np.random.Generator, cfg: Config) -> int:
    """A random sub-volume start in embedding slices (position in image slices = start · S/E)."""
    m = cfg.model
    return int(rng.integers(0, m.emb_size - m.emb_slab_depth + 1))


def real_sub_volume(real: torch.Tensor, start: int, cfg: Config) -> tuple[torch.Tensor, int]:
    """The real sub-volume covering exactly the axial slices G^H renders from embedding slices [start, start+e)."""
    m = cfg.model
    pos = start * m.image_size // m.emb_size  # first axial slice
    return real[:, :, pos : pos + m.slab_depth], pos  # (B, 1, S/8, S, S)


@dataclasses.dataclass
class _Batch:
    """What every sub-step of one iteration shares: the networks, the real batch and its sub-volume, the switches."""

    nets: Networks
    opts: Optimizers
    call: Networks
    cfg: Config
    amp: Amp
    iteration: int
    real: torch.Tensor
    real_slab: torch.Tensor
    real_low: torch.Tensor | None
    pos: int
    start: int
    labels: torch.Tensor | None
    sigma: float

    @property
    def b(self) -> int:
        return self.real.shape[0]

    @property
    def hagan(self) -> bool:
        return self.cfg.model.arch == "hagan"

    @property
    def conditional(self) -> bool:
        return self.labels is not None

    def noise(self) -> torch.Tensor:
        return torch.randn(self.b, self.cfg.model.latent_dim, device=self.real.device)

    def jitter(self, x):  # instance noise on one of D's inputs
        return x + self.sigma * torch.randn_like(x) if self.sigma > 0 and x is not None else x

    def d_out(self, disc, x, x_low, d_low):
        h = disc(x, self.pos)
        return (h + d_low(x_low)) / 2 if self.hagan else h  # (B, 1) or (B, 1 + K)

    def full(self, value: float) -> torch.Tensor:
        return torch.full((), value, device=self.real.device)


def _class_ce(cls_logits, target):
    return F.cross_entropy(cls_logits.float(), target)


def _d_step(c: _Batch, out: dict) -> tuple:
    """1. D on real and fake sub-volumes (one forward for both), R1 when due. Returns G's sample (kept with its
    graph when ``train.share_fakes``, for the G step)."""
    t, hagan, b = c.cfg.train, c.hagan, c.b
    r1 = r1_due(t, c.iteration)
    with c.amp.autocast():
        with contextlib.nullcontext() if t.share_fakes else torch.no_grad():
            # shared: G's graph is kept for the G step (the wrapper: G trains through it); else a no-grad sample
            gen, gen_low = (c.call.g, c.call.g_low) if t.share_fakes else (c.nets.g, c.nets.g_low)
            fake_slab, a = gen(c.noise(), c.start, c.labels)
            fake_low = gen_low(a) if hagan else None
        d_in_real, d_in_real_low = c.jitter(c.real_slab), c.jitter(c.real_low)
        if r1:  # R1 differentiates D(real) w.r.t. D's real inputs
            d_in_real = d_in_real.detach().requires_grad_(True)
            d_in_real_low = d_in_real_low.detach().requires_grad_(True) if hagan else None
        both = torch.cat([d_in_real, c.jitter(fake_slab.detach())])
        both_low = torch.cat([d_in_real_low, c.jitter(fake_low.detach())]) if hagan else None
        logits, cls = split_logits(c.d_out(c.call.d, both, both_low, c.call.d_low))
        d_real, d_fake = logits[:b], logits[b:]
        d_loss = bce(d_real, 1.0) + bce(d_fake, 0.0)
        if c.conditional:
            d_class = _class_ce(cls[:b], c.labels)
            d_loss = d_loss + d_class
    if r1:
        inputs = [d_in_real, d_in_real_low] if hagan else [d_in_real]
        grads = torch.autograd.grad(d_real.float().sum(), inputs, create_graph=True)
        r1_pen = sum(gr.float().pow(2).flatten(1).sum(1) for gr in grads).mean()
        d_loss = d_loss + (t.r1_gamma / 2) * t.r1_every * r1_pen
    c.amp.step(d_loss, c.opts["d"])
    out.update(d_loss=d_loss.detach(), d_real=d_real.detach().mean(), d_fake=d_fake.detach().mean())
    if r1:
        out["r1"] = r1_pen.detach()
    if c.sigma > 0:
        out["noise_sigma"] = c.full(c.sigma)
    if c.conditional:
        out["d_class"] = d_class.detach()
    return fake_slab, a, fake_low


def _g_step(c: _Batch, out: dict, fake_slab, a, fake_low) -> tuple:
    """2. G against the updated (frozen) D — through the CRF for CRF-GAN, blended by the CRF-weight schedule.
    Returns the embedding and D's logits the CRF step reuses when fakes are shared."""
    m, t, nets = c.cfg.model, c.cfg.train, c.nets
    with frozen(nets.d, nets.d_low, nets.crf), c.amp.autocast():
        if not t.share_fakes:
            fake_slab, a = c.call.g(c.noise(), c.start, c.labels)
            fake_low = c.call.g_low(a) if c.hagan else None
        d_fake_g, cls_fake_g = split_logits(c.d_out(nets.d, c.jitter(fake_slab), c.jitter(fake_low), nets.d_low))
        if c.hagan:
            y = d_fake_g
        else:
            w = crf_weight(t, c.iteration)
            y = w * nets.crf(a, d_fake_g) + (1 - w) * d_fake_g
            out["crf_weight"] = c.full(w)
        g_loss = bce(y, 1.0)
        if c.conditional:
            g_class = _class_ce(cls_fake_g, c.labels)
            g_loss = g_loss + m.lambda_class * g_class
    c.amp.step(g_loss, c.opts["g"])
    if nets.g_ema is not None:
        update_ema(nets.g_ema, nets.g, ema_decay_at(t, c.iteration))
    out["g_loss"] = g_loss.detach()
    if c.conditional:
        out["g_class"] = g_class.detach()
    return a, d_fake_g


def _crf_step(c: _Batch, out: dict, a, d_fake_g) -> None:
    """3. CRF (CRF-GAN): real embedding E(x_full) vs a fake one, each with D's logits after D's update."""
    nets, b = c.nets, c.b
    with torch.no_grad(), c.amp.autocast():
        a_real = nets.e(c.real)  # E(x_full): the real volume's embedding, (B, Ce, E, E, E)
        d_real_c = split_logits(nets.d(c.real_slab, c.pos))[0]  # D after its update, as the reference
        if c.cfg.train.share_fakes:
            a_fake, d_fake_c = a.detach(), d_fake_g.detach()
        else:
            fake_c, a_fake = nets.g(c.noise(), c.start, c.labels)
            d_fake_c = split_logits(nets.d(fake_c, c.pos))[0]
    with c.amp.autocast():
        y_crf = c.call.crf(torch.cat([a_real, a_fake]), torch.cat([d_real_c, d_fake_c]))  # one CRF forward
        crf_loss = bce(y_crf[:b], 1.0) + bce(y_crf[b:], 0.0)
    c.amp.step(crf_loss, c.opts["crf"])
    out["crf_loss"] = crf_loss.detach()


def _e_steps(c: _Batch, out: dict) -> None:
    """4. E: the slab reconstructed through G's renderer. 5. E^G (HA-GAN): z from the encoder's slab embeddings,
    reconstructed through G and G^L."""
    nets = c.nets
    with frozen(nets.g), c.amp.autocast():
        rec = nets.g.renderer(c.call.e(c.real_slab))  # G^H(E(x_slab))
        e_loss = l1(rec, c.real_slab)
    c.amp.step(e_loss, c.opts["e"])
    out["e_loss"] = e_loss.detach()
    if not c.hagan:
        return
    with torch.no_grad(), c.amp.autocast():
        step, s = c.cfg.model.slab_depth, c.cfg.model.image_size
        a_hat = torch.cat([nets.e(c.real[:, :, i : i + step]) for i in range(0, s, step)], dim=2)
    with frozen(nets.g, nets.g_low), c.amp.autocast():
        rec_slab, a_rec = nets.g(c.call.e_sub(a_hat), c.start, c.labels)
        rec_low = nets.g_low(a_rec)
        sub_loss = (l1(rec_slab, c.real_slab) + l1(rec_low, c.real_low)) / 2
    c.amp.step(sub_loss, c.opts["e_sub"])
    out["e_sub_loss"] = sub_loss.detach()


def train_step(
    nets: Networks,
    opts: Optimizers,
    real: torch.Tensor,
    iteration: int,
    cfg: Config,
    rng: np.random.Generator,
    amp: Amp | None = None,
    start: int | None = None,
    labels: torch.Tensor | None = None,
    call: Networks | None = None,
) -> dict[str, torch.Tensor]:
    """One iteration on a batch of whole real volumes ``real`` (B, 1, S, S, S) in [-1, 1]: D, G, CRF (CRF-GAN),
    E and E^G (HA-GAN), in that order.

    ``labels`` (B,) long: the volumes' classes (required when ``model.num_classes`` > 0). ``call``: the modules to call
    for the trained network of each sub-step (DDP wrappers), default ``nets``.
    Returns detached scalar losses on ``real``'s device (read them only when logging: reading synchronises a GPU).
    """
    m, t = cfg.model, cfg.train
    b, s = real.shape[0], m.image_size
    assert real.shape[1:] == (1, s, s, s), f"real volumes must be (B, 1, {s}, {s}, {s}), got {tuple(real.shape)}"
    if m.num_classes > 0:
        assert labels is not None and labels.shape == (b,), f"model.num_classes={m.num_classes}: labels (B,) required"
        labels = labels.to(real.device, non_blocking=True).long()
    else:
        labels = None
    start = sample_start(rng, cfg) if start is None else start
    if t.channels_last:
        real = real.contiguous(memory_format=torch.channels_last_3d)
    real_slab, pos = real_sub_volume(real, start, cfg)
    real_low = low_res(real, m.emb_size) if m.arch == "hagan" else None
    c = _Batch(nets, opts, call or nets, cfg, amp or Amp(t.amp, real.device), iteration, real, real_slab, real_low,
               pos, start, labels, instance_noise_sigma(t, iteration))
    out: dict[str, torch.Tensor] = {}
    fake_slab, a, fake_low = _d_step(c, out)
    a, d_fake_g = _g_step(c, out, fake_slab, a, fake_low)
    del fake_slab, fake_low
    if not c.hagan:
        _crf_step(c, out, a, d_fake_g)
    del a, d_fake_g
    _e_steps(c, out)
    c.amp.end()
    return out
