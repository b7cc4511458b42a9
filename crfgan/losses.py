"""Losses and schedules of the CRF-GAN training step."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import TrainConfig


def bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    """BCE-with-logits against a constant label (1 = real, 0 = fake)."""
    return F.binary_cross_entropy_with_logits(logits.float(), torch.full_like(logits, target, dtype=torch.float32))


def crf_weight(cfg: TrainConfig, iteration: int) -> float:
    """w in the generator's ``w·CRF(A, D(fake)) + (1−w)·D(fake)``: linear from ``crf_weight_start`` to 0."""
    if cfg.crf_weight_decay_iters <= 0:
        return cfg.crf_weight_start
    return cfg.crf_weight_start * max(0.0, 1.0 - iteration / cfg.crf_weight_decay_iters)


def l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(x.float(), y.float())
