"""The record alone: an MLP over the clinical-field tokens. How far the record goes without the slide."""
from __future__ import annotations

from torch import nn

from persam_lib.models.base import Batch, ModelConfig, ModelOutput
from persam_lib.models.clinical import ClinicalTokenizer


class ClinicalOnly(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.d_model
        self.clinical = ClinicalTokenizer(config.field_cardinalities, d)
        self.mlp = nn.Sequential(nn.Linear(len(config.field_cardinalities) * d, d), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(d, config.n_classes))

    def forward(self, batch: Batch, *, rollout: bool = False) -> ModelOutput:
        return ModelOutput(logits=self.mlp(self.clinical(batch.codes, batch.values).flatten(1)))
