"""Build every network and optimizer of an arch from the config.

CRF-GAN: G (G^A + G^H), D (D^H), E (half-encoder), CRF.
HA-GAN:  G (G^A + G^H), G^L, D (D^H), D^L, E, E^G.
Either, with ``train.ema_decay`` > 0: ``g_ema``, an exponential moving average of G's weights (never trained by an
optimizer, no gradients; ``crfgan.step.update_ema``), which renders for evaluation and synthesis (``eval_generator``).
Each network is its own module (and, under DDP, its own wrapper), so sub-steps that freeze one never leave
another with unused parameters.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields

import torch
from torch import nn

from .config import Config
from .crf import MeanFieldCRF
from .discriminator import SlabDiscriminator
from .encoder import HalfEncoder
from .generator import Generator
from .hagan import LowResDiscriminator, LowResGenerator, SubEncoder
from .layers import count_params


@dataclass
class Networks:
    g: Generator
    d: SlabDiscriminator
    e: HalfEncoder
    crf: MeanFieldCRF | None = None
    g_low: LowResGenerator | None = None
    d_low: LowResDiscriminator | None = None
    e_sub: SubEncoder | None = None
    g_ema: Generator | None = None  # train.ema_decay > 0: the EMA copy of G (no optimizer, no gradients)

    def items(self) -> list[tuple[str, nn.Module]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None]

    def trained(self) -> list[tuple[str, nn.Module]]:
        """The networks an optimizer trains (``items`` without the EMA copy): what DDP wraps."""
        return [(n, m) for n, m in self.items() if n != "g_ema"]

    def eval_generator(self) -> Generator:
        """The generator that renders for scores, montages and export: the EMA copy when there is one, else G."""
        return self.g_ema if self.g_ema is not None else self.g

    def to(self, device) -> Networks:
        for _, m in self.items():
            m.to(device)
        return self

    def train(self, mode: bool = True) -> Networks:
        for _, m in self.items():
            m.train(mode)
        return self

    def param_counts(self) -> dict[str, int]:
        return {name: count_params(m) for name, m in self.items()}


@dataclass
class Optimizers:
    opts: dict[str, torch.optim.Optimizer] = field(default_factory=dict)

    def __getitem__(self, name: str) -> torch.optim.Optimizer:
        return self.opts[name]

    def state_dict(self) -> dict:
        return {k: o.state_dict() for k, o in self.opts.items()}

    def load_state_dict(self, state: dict) -> None:
        for k, o in self.opts.items():
            o.load_state_dict(state[k])


def build_networks(cfg: Config) -> Networks:
    m = cfg.model
    nets = Networks(g=Generator(m), d=SlabDiscriminator(m), e=HalfEncoder(m))
    if m.arch == "crfgan":
        nets.crf = MeanFieldCRF(m)
    else:
        nets.g_low, nets.d_low, nets.e_sub = LowResGenerator(m), LowResDiscriminator(m), SubEncoder(m)
    if cfg.train.ema_decay > 0:
        nets.g_ema = copy.deepcopy(nets.g).requires_grad_(False)  # starts equal to G
    return nets


def apply_execution_options(cfg: Config, nets: Networks) -> Networks:
    """``train.channels_last`` and ``train.compile``: how the networks run, never what they compute.

    Call after ``.to(device)`` and before any DDP wrapping; ``Module.compile`` keeps state_dict keys unchanged, so
    checkpoints stay interchangeable with uncompiled runs.
    """
    for _, m in nets.items():
        if cfg.train.channels_last:
            m.to(memory_format=torch.channels_last_3d)
        if cfg.train.compile:
            m.compile()
    return nets


def build_optimizers(cfg: Config, nets: Networks) -> Optimizers:
    """Adam(β=(0, 0.999)) per sub-step as in the reference: lr G=E=1e-4, D=CRF=4e-4.

    HA-GAN's G^L trains with G and D^L with D (one optimizer each over both modules, as the reference's single
    G and D modules); E^G has its own at the encoder's rate.
    """
    t = cfg.train

    def adam(params, lr):
        # fused: one kernel per step, no per-parameter temporaries (lower peak memory than foreach)
        return torch.optim.Adam(params, lr=lr, betas=(t.beta1, t.beta2), eps=1e-8, fused=True)

    def params(*mods):
        return [p for mod in mods if mod is not None for p in mod.parameters()]

    opts = {
        "g": adam(params(nets.g, nets.g_low), t.lr_g),
        "d": adam(params(nets.d, nets.d_low), t.lr_d),
        "e": adam(params(nets.e), t.lr_e),
    }
    if nets.crf is not None:
        opts["crf"] = adam(params(nets.crf), t.lr_crf)
    if nets.e_sub is not None:
        opts["e_sub"] = adam(params(nets.e_sub), t.lr_e)
    return Optimizers(opts)
