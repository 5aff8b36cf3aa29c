"""PersAM (Takagi et al., arXiv 2206.03003): a Transformer over patch tokens and clinical-record tokens.

The sequence is [class token, one token per clinical field, one token per patch]. Attention runs
in both directions between all tokens, so the record can change what the model looks at and the
image can change how the record is read. The attention of the class token over the patch tokens
in the last layer is the attention map; it changes when the record changes.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from persam_lib.models.base import Batch, ModelConfig, ModelOutput
from persam_lib.models.clinical import ClinicalTokenizer
from persam_lib.models.layers import TransformerBlock, patch_embedding


class PersAM(nn.Module):
    """Personalised attention over a slide's patches and the patient's clinical record."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.patch_embed = patch_embedding(config.feature_dim, d, config.dropout)
        self.position = nn.Linear(2, d) if config.use_position else None
        self.clinical = ClinicalTokenizer(config.field_cardinalities, d)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.type_embed = nn.Parameter(torch.randn(3, d) * 0.02)  # class / clinical / patch token types
        if config.patch_attention not in ("full", "bipartite"):
            raise ValueError(f"patch_attention must be 'full' or 'bipartite', got '{config.patch_attention}'")
        n_global = 1 + len(config.field_cardinalities) if config.patch_attention == "bipartite" else 0
        self.blocks = nn.ModuleList(TransformerBlock(d, config.n_heads, config.mlp_ratio, config.dropout, n_global) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, config.n_classes)

    def forward(self, batch: Batch) -> ModelOutput:
        b, n, _ = batch.features.shape
        patches = self.patch_embed(batch.features)  # (B, N, d)
        if self.position is not None:
            patches = patches + self.position(_normalised_positions(batch.coords, batch.patch_mask))
        fields = self.clinical(batch.codes, batch.values)  # (B, F, d)
        f = fields.shape[1]
        tokens = torch.cat(
            [self.cls_token.expand(b, -1, -1) + self.type_embed[0], fields + self.type_embed[1], patches + self.type_embed[2]], dim=1
        )  # (B, 1 + F + N, d)
        key_mask = torch.cat([torch.ones(b, 1 + f, dtype=torch.bool, device=tokens.device), batch.patch_mask], dim=1)
        cls_attention = None
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            if self.config.checkpoint_activations and self.training and not last:
                tokens, _ = checkpoint(block, tokens, key_mask, use_reentrant=False)
            else:
                tokens, cls_attention = block(tokens, key_mask, return_cls_attention=last)
        logits = self.head(self.norm(tokens[:, 0]))
        assert cls_attention is not None
        mean_attention = cls_attention.mean(1)  # (B, T), averaged over heads
        field_attention = _renormalise(mean_attention[:, 1 : 1 + f])
        patch_attention = _renormalise(mean_attention[:, 1 + f :])
        return ModelOutput(logits=logits, patch_attention=patch_attention, field_attention=field_attention)


def _renormalise(weights: torch.Tensor) -> torch.Tensor:
    return weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)


def _normalised_positions(coords: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Patch positions scaled to [0, 1] within each slide's tissue bounding box."""
    c = coords.float()
    big = torch.finfo(c.dtype).max
    lo = torch.where(mask[..., None], c, torch.full_like(c, big)).amin(1, keepdim=True)
    hi = torch.where(mask[..., None], c, torch.full_like(c, -big)).amax(1, keepdim=True)
    return (c - lo) / (hi - lo).clamp_min(1.0)
