"""MMA + MGMU: EHR-guided spatial attention and a multi-head gated multimodal unit.

* **MMA** (multi-modal attention): the record, embedded, steers which patches the model attends
  to — additive attention whose score for patch i is ``w^T tanh(W_h h_i + W_e e)`` — while a second
  attention, steered by the image, weighs the clinical fields.
* **MGMU** (multi-head gated multimodal unit): in each of several subspaces (heads), image and
  record features are squashed (``tanh``) and mixed by a learned gate ``z = sigmoid(W_z [x_img; x_ehr])``
  as ``z * h_img + (1 - z) * h_ehr``; the heads are concatenated for the classifier.
Designed for CT/MRI + EHR; here it runs on a slide's patch features (the patches play the role of
spatial positions of the CNN feature map).
"""
from __future__ import annotations

import torch
from torch import nn

from persam_lib.models.layers import patch_embedding
from persam_lib.models.base import Batch, ModelConfig, ModelOutput, masked_softmax, single_attention_output
from persam_lib.models.clinical import ClinicalTokenizer


class MultiModalAttention(nn.Module):
    """Patch attention steered by the record embedding ``e``."""

    def __init__(self, d: int):
        super().__init__()
        self.w_h = nn.Linear(d, d)
        self.w_e = nn.Linear(d, d, bias=False)
        self.score = nn.Linear(d, 1)

    def forward(self, patches: torch.Tensor, record: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.score(torch.tanh(self.w_h(patches) + self.w_e(record)[:, None])).squeeze(-1)  # (B, N)
        weights = masked_softmax(scores, mask)
        return torch.einsum("bn,bnd->bd", weights.to(patches.dtype), patches), weights


class MultiHeadGMU(nn.Module):
    """Gated fusion of an image and a record vector in ``heads`` parallel subspaces."""

    def __init__(self, d: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.image = nn.Linear(d, heads * head_dim)
        self.record = nn.Linear(d, heads * head_dim)
        self.gate = nn.Linear(2 * d, heads * head_dim)

    def forward(self, image: torch.Tensor, record: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h_img, h_ehr = torch.tanh(self.image(image)), torch.tanh(self.record(record))
        z = torch.sigmoid(self.gate(torch.cat([image, record], dim=-1)))
        fused = z * h_img + (1 - z) * h_ehr  # (B, heads * head_dim)
        return fused, z.view(-1, self.heads, self.head_dim).mean(-1)  # gate per head: how much the image counts


class MMAMGMU(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.d_model
        self.embed = patch_embedding(config.feature_dim, d, config.dropout)
        self.clinical = ClinicalTokenizer(config.field_cardinalities, d)
        self.record_summary = nn.Sequential(nn.Linear(len(config.field_cardinalities) * d, d), nn.GELU())
        self.mma = MultiModalAttention(d)
        self.field_query = nn.Linear(d, d)
        self.mgmu = MultiHeadGMU(d, heads=config.n_heads, head_dim=max(d // config.n_heads, 8))
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.n_heads * max(d // config.n_heads, 8), config.n_classes))

    def forward(self, batch: Batch, *, rollout: bool = False) -> ModelOutput:
        patches = self.embed(batch.features)  # (B, N, d)
        fields = self.clinical(batch.codes, batch.values)  # (B, F, d)
        record = self.record_summary(fields.flatten(1))  # (B, d)
        image, patch_attention = self.mma(patches, record, batch.patch_mask)
        # the image steers attention over the clinical fields
        field_scores = torch.einsum("bd,bfd->bf", self.field_query(image), fields) / fields.shape[-1] ** 0.5
        field_attention = torch.softmax(field_scores.float(), dim=-1)
        record_attended = torch.einsum("bf,bfd->bd", field_attention.to(fields.dtype), fields)
        fused, _ = self.mgmu(image, record_attended + record)
        return single_attention_output(self.head(fused), patch_attention, field_attention)
