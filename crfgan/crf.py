"""Fully connected binary CRF with mean-field inference over pieces of the embedding A (NCRF-style).

Reference: CRF-GAN ``CRF`` (after NCRF, baidu-research/NCRF). Nodes i carry feature vectors f_i taken from A;
the pairwise potential is a learnable symmetric W (initialised to zero) times the cosine similarity of f_i and
f_j; every node's unary is D's logit for the sub-volume. T mean-field iterations:

    logit_i ← u + Σ_j (2·σ(logit_j) − 1) · W_ij · sim_ij

and the output is the mean logit over nodes. With W = 0 the output equals the unary.

Nodes (``model.crf.nodes``):
- ``slabs`` (default): depth slabs of A, one per sub-volume G^H renders. This is the paper's stated intent —
  the CRF couples the independently rendered slabs of one volume, so the generator is rewarded for
  cross-slab consistency, which is exactly what a slab-wise renderer lacks.
- ``channels``: the reference code's reshape, which makes each node a group of embedding channels.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig, crf_num_nodes


class MeanFieldCRF(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.nodes = cfg.crf.nodes
        self.num_nodes = crf_num_nodes(cfg)
        self.iterations = cfg.crf.iterations
        self.W = nn.Parameter(torch.zeros(self.num_nodes, self.num_nodes))

    def features(self, a: torch.Tensor) -> torch.Tensor:
        """A (B, Ce, E, E, E) → node features (B, N, F)."""
        b, n = a.shape[0], self.num_nodes
        if self.nodes == "slabs":
            d = a.shape[2] // n
            return a.unflatten(2, (n, d)).transpose(1, 2).reshape(b, n, -1)  # (B, N, Ce·d·E·E)
        return a.reshape(b, n, -1)  # (B, N, Ce/N·E³): channel groups, as the reference reshape

    def similarity(self, a: torch.Tensor) -> torch.Tensor:
        f = self.features(a).float()
        norm = f.norm(dim=2, keepdim=True)  # (B, N, 1)
        return (f @ f.transpose(1, 2)) / (norm @ norm.transpose(1, 2) + 1e-6)  # (B, N, N)

    def forward(self, a: torch.Tensor, unary: torch.Tensor) -> torch.Tensor:
        """A (B, Ce, E, E, E), unary logits (B, 1) → CRF logit (B, 1)."""
        w_sym = (self.W + self.W.t()) / 2
        pairwise = self.similarity(a) * w_sym  # (B, N, N)
        u = unary.float().expand(-1, self.num_nodes)  # (B, N)
        logits = u
        for _ in range(self.iterations):
            q = 2 * torch.sigmoid(logits) - 1  # E[±1] under the current marginals
            logits = u + (pairwise * q[:, None, :]).sum(dim=2)
        return logits.mean(dim=1, keepdim=True).to(unary.dtype)
