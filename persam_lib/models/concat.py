"""Late fusion baseline: the ABMIL slide embedding concatenated with an MLP of the clinical record.

It reads the record for its prediction, but its attention over patches cannot depend on the
record — the contrast PersAM is measured against.
"""
from __future__ import annotations

import torch
from torch import nn

from persam_lib.models.abmil import GatedAttentionPool
from persam_lib.models.layers import patch_embedding
from persam_lib.models.base import Batch, ModelConfig, ModelOutput, single_attention_output
from persam_lib.models.clinical import ClinicalTokenizer


class ConcatFusion(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.d_model
        n_fields = len(config.field_cardinalities)
        self.embed = patch_embedding(config.feature_dim, d, config.dropout)
        self.pool = GatedAttentionPool(d, d)
        self.clinical = ClinicalTokenizer(config.field_cardinalities, d)
        self.record_mlp = nn.Sequential(nn.Linear(n_fields * d, d), nn.GELU(), nn.Dropout(config.dropout))
        self.head = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(d, config.n_classes))

    def forward(self, batch: Batch, *, rollout: bool = False) -> ModelOutput:
        pooled, weights = self.pool(self.embed(batch.features), batch.patch_mask)  # (B, d), (B, N); B = 1 for one shared bag
        record = self.record_mlp(self.clinical(batch.codes, batch.values).flatten(1))  # (B, d)
        rows = batch.n_rows
        return single_attention_output(self.head(torch.cat([pooled.expand(rows, -1), record], dim=-1)), weights.expand(rows, -1))
