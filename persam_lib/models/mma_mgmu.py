"""MMA + MGMU: EHR-guided spatial attention and a multi-head gated multimodal unit.

* **MMA** (multi-modal attention): the record, embedded, steers which patches the model attends
  to — additive attention whose score for patch i is ``w^T tanh(W_h h_i + W_e e)`` — while a second
  attention, steered by the image, weighs the clinical fields.
* **MGMU** (multi-head gated multimodal unit): in each of several subspaces (heads), image and
  record features are squashed (``tanh``) and mixed by a learned gate ``z = sigmoid(W_z [x_img; x_ehr])``
  as ``z * h_img + (1 - z) * h_ehr``; the heads are concatenated for the classifier.
Designed for CT/MRI + EHR. `MMAMGMUImage` is the native form on 2-D images: a CNN whose spatial
attention is steered by the record at chosen stages (``ehr_stages``), then the same MMA pooling over
the last feature map's cells and the MGMU. `MMAMGMU` runs on a slide's patch features (the patches
play the role of spatial positions of the CNN feature map).
"""
from __future__ import annotations

import torch
from torch import nn

from persam_lib.models.layers import patch_embedding
from persam_lib.models.base import Batch, ModelConfig, ModelOutput, masked_softmax, single_attention_output
from persam_lib.models.clinical import ClinicalTokenizer
from persam_lib.models.cnn import ConvBackbone, cells_to_tokens, require_images


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


class RecordFusion(nn.Module):
    """What both forms share after the image side: the record summary, attention over the clinical
    fields steered by the image, and the multi-head GMU."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.d_model
        self.clinical = ClinicalTokenizer(config.field_cardinalities, d)
        self.record_summary = nn.Sequential(nn.Linear(len(config.field_cardinalities) * d, d), nn.GELU())
        self.mma = MultiModalAttention(d)
        self.field_query = nn.Linear(d, d)
        head_dim = max(d // config.n_heads, 8)
        self.mgmu = MultiHeadGMU(d, heads=config.n_heads, head_dim=head_dim)
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.n_heads * head_dim, config.n_classes))

    def record(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Field tokens (B, F, d) and the record's summary vector (B, d)."""
        fields = self.clinical(batch.codes, batch.values)
        return fields, self.record_summary(fields.flatten(1))

    def forward(self, patches: torch.Tensor, mask: torch.Tensor, fields: torch.Tensor, record: torch.Tensor) -> ModelOutput:
        image, patch_attention = self.mma(patches, record, mask)
        # the image steers attention over the clinical fields
        field_scores = torch.einsum("bd,bfd->bf", self.field_query(image), fields) / fields.shape[-1] ** 0.5
        field_attention = torch.softmax(field_scores.float(), dim=-1)
        record_attended = torch.einsum("bf,bfd->bd", field_attention.to(fields.dtype), fields)
        fused, _ = self.mgmu(image, record_attended + record)
        return single_attention_output(self.head(fused), patch_attention, field_attention)


class MMAMGMU(nn.Module):
    """MMA + MGMU on a bag of patch features."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed = patch_embedding(config.feature_dim, config.d_model, config.dropout)
        self.fusion = RecordFusion(config)

    def forward(self, batch: Batch, *, rollout: bool = False) -> ModelOutput:
        patches = self.embed(batch.features)  # (B, N, d); B = 1 for one bag under several records
        fields, record = self.fusion.record(batch)
        mask = batch.patch_mask
        if patches.shape[0] != record.shape[0]:
            patches, mask = patches.expand(record.shape[0], -1, -1), mask.expand(record.shape[0], -1)
        return self.fusion(patches, mask, fields, record)


class EHRSpatialAttention(nn.Module):
    """A spatial gate on a feature map steered by the record: a = sigmoid(w^T tanh(W_x x_ij + W_e e)), x ← x · a."""

    def __init__(self, channels: int, d_record: int, hidden: int):
        super().__init__()
        self.w_x = nn.Conv2d(channels, hidden, 1)
        self.w_e = nn.Linear(d_record, hidden, bias=False)
        self.score = nn.Conv2d(hidden, 1, 1)

    def forward(self, x: torch.Tensor, record: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.score(torch.tanh(self.w_x(x) + self.w_e(record)[:, :, None, None])))  # (B, 1, h, w)
        return x * gate


def parse_stages(text: str, n_stages: int) -> tuple[int, ...]:
    """``"3,4"`` → (2, 3): the 1-based stage numbers as 0-based indices, each checked to exist."""
    try:
        stages = tuple(sorted({int(part) for part in str(text).split(",")}))
    except ValueError:
        raise ValueError(f"ehr_stages must be comma-separated stage numbers like '3,4', got {text!r}") from None
    if not stages or stages[0] < 1 or stages[-1] > n_stages:
        raise ValueError(f"ehr_stages {text!r}: the CNN has stages 1..{n_stages} (one per halving of grid_cell); name at least one")
    return tuple(s - 1 for s in stages)


class MMAMGMUImage(nn.Module):
    """MMA + MGMU on 2-D images: a CNN with record-steered spatial attention at ``ehr_stages``.

    The stages before the first steered one do not depend on the record: for one image under K
    records they run once, and the feature map is repeated K times from there.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.d_model
        self.backbone = ConvBackbone(config.feature_dim, d, config.grid_cell)
        self.steered = parse_stages(config.ehr_stages, len(self.backbone.stages))
        widths = [stage[0].out_channels for stage in self.backbone.stages]
        self.gates = nn.ModuleDict({str(i): EHRSpatialAttention(widths[i], d, max(widths[i] // 2, 8)) for i in self.steered})
        self.project = nn.Conv2d(self.backbone.out_dim, d, 1)
        self.fusion = RecordFusion(config)

    def forward(self, batch: Batch, *, rollout: bool = False) -> ModelOutput:
        x = require_images(batch, "mma_mgmu")
        fields, record = self.fusion.record(batch)
        for i, stage in enumerate(self.backbone.stages):
            x = stage(x)
            if str(i) in self.gates:
                if x.shape[0] != record.shape[0]:  # one image under several records: branch here
                    x = x.expand(record.shape[0], -1, -1, -1)
                x = self.gates[str(i)](x, record)
        patches = cells_to_tokens(self.project(x))  # (B, N, d)
        mask = torch.ones(patches.shape[:2], dtype=torch.bool, device=patches.device)
        return self.fusion(patches, mask, fields, record)
