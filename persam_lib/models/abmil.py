"""ABMIL (Ilse et al. 2018): gated attention pooling over patches; reads the image only."""
from __future__ import annotations

import torch
from torch import nn

from persam_lib.models.layers import patch_embedding
from persam_lib.models.base import Batch, ModelConfig, ModelOutput, masked_softmax, single_attention_output


class GatedAttentionPool(nn.Module):
    """a_i = w^T (tanh(V h_i) * sigmoid(U h_i)); returns the pooled embedding and the weights."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.v = nn.Linear(d_model, hidden)
        self.u = nn.Linear(d_model, hidden)
        self.w = nn.Linear(hidden, 1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.w(torch.tanh(self.v(h)) * torch.sigmoid(self.u(h))).squeeze(-1)  # (B, N)
        weights = masked_softmax(scores, mask)
        return torch.einsum("bn,bnd->bd", weights.to(h.dtype), h), weights


class ABMIL(nn.Module):
    """Image-only attention MIL; the baseline that cannot read the clinical record."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.d_model
        self.embed = patch_embedding(config.feature_dim, d, config.dropout)
        self.pool = GatedAttentionPool(d, d)
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(d, config.n_classes))

    def forward(self, batch: Batch, *, rollout: bool = False) -> ModelOutput:
        pooled, weights = self.pool(self.embed(batch.features), batch.patch_mask)
        return single_attention_output(self.head(pooled), weights).expand(batch.n_rows)  # the record cannot change it
