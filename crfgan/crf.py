"""Fully connected binary CRF with mean-field inference over pieces of the embedding A (NCRF-style).

Reference: CRF-GAN ``CRF`` (after NCRF, baidu-research/NCRF). Nodes i carry feature vectors f_i taken from A;
the pairwise potential is a learnable symmetric W (initialised to zero) times the cosine similarity of f_i and
f_j; every node's unary is D's logit for the sub-volume. T mean-field iterations:

    logit_i ← u + s · Σ_j (2·σ(logit_j) − 1) · W_ij · sim_ij        (j over all N nodes)

and the output is the mean logit over nodes. With W = 0 the output equals the unary.

Scale with N (``model.crf.pairwise``): the reference sums over all N nodes (``sum``, s = 1), so for the same
weights the pairwise term, and the CRF's share of the generator loss ``w·CRF + (1−w)·D``, grows with N; and every
W_ij moves by about the same step per Adam update, so the term also grows N times faster in training. ``mean``
(s = 1/N) makes the term an average over nodes: its size does not depend on N, which keeps the CRF weight schedule
comparable when a sweep varies ``model.crf.num_nodes``. With N fixed the two differ only by a rescaling of W.

Nodes (``model.crf.nodes``):
- ``channels`` (the paper presets): the reference code's reshape, each node a group of embedding channels.
- ``slabs``: depth slabs of A, one per sub-volume G^H renders. Not the paper's model: every node still gets the
  same unary (D's logit for one sub-volume), and seams come from G^H, which the CRF never sees.

Precision: the similarity and the mean-field updates run in float32 with autocast disabled (under bf16/fp16 autocast
a matmul would otherwise drop back to half precision even on ``.float()`` inputs); the output is float32.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .config import ModelConfig, crf_num_nodes


def no_autocast(device: torch.device):
    """Autocast off for ``device`` (a no-op on devices without autocast, e.g. meta)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


class MeanFieldCRF(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.nodes = cfg.crf.nodes
        self.num_nodes = crf_num_nodes(cfg)
        self.iterations = cfg.crf.iterations
        self.scale = 1.0 / self.num_nodes if cfg.crf.pairwise == "mean" else 1.0
        self.W = nn.Parameter(torch.zeros(self.num_nodes, self.num_nodes))

    def features(self, a: torch.Tensor) -> torch.Tensor:
        """A (B, Ce, E, E, E) → node features (B, N, F)."""
        b, n = a.shape[0], self.num_nodes
        if self.nodes == "slabs":
            d = a.shape[2] // n
            return a.unflatten(2, (n, d)).transpose(1, 2).reshape(b, n, -1)  # (B, N, Ce·d·E·E)
        return a.reshape(b, n, -1)  # (B, N, Ce/N·E³): channel groups, as the reference reshape

    def similarity(self, a: torch.Tensor) -> torch.Tensor:
        with no_autocast(a.device):
            f = self.features(a).float()
            norm = f.norm(dim=2, keepdim=True)  # (B, N, 1)
            return (f @ f.transpose(1, 2)) / (norm @ norm.transpose(1, 2) + 1e-6)  # (B, N, N)

    def forward(self, a: torch.Tensor, unary: torch.Tensor) -> torch.Tensor:
        """A (B, Ce, E, E, E), unary logits (B, 1) → CRF logit (B, 1), float32."""
        with no_autocast(a.device):
            w_sym = (self.W.float() + self.W.float().t()) / 2
            pairwise = self.similarity(a) * (w_sym * self.scale)  # (B, N, N)
            u = unary.float().expand(-1, self.num_nodes)  # (B, N)
            logits = u
            for _ in range(self.iterations):
                q = 2 * torch.sigmoid(logits) - 1  # E[±1] under the current marginals
                logits = u + (pairwise * q[:, None, :]).sum(dim=2)
            return logits.mean(dim=1, keepdim=True)
