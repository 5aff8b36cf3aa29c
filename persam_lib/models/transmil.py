"""TransMIL-style image-only Transformer (Shao et al. 2021): class token + patch tokens, with a
pyramid position encoding (depthwise convolutions over the patch grid) between the two layers.

Patches are placed on their slide grid from their coordinates (not TransMIL's square reshaping),
so neighbours on the slide are neighbours for the convolution. Reads the image only.
"""
from __future__ import annotations

import torch
from torch import nn

from persam_lib.models.base import Batch, ModelConfig, ModelOutput
from persam_lib.models.grid import scatter_to_grid, gather_from_grid
from persam_lib.models.layers import TransformerBlock, attention_rollout, patch_embedding, renormalise


class PPEG(nn.Module):
    """Pyramid position encoding generator: 7x7, 5x5 and 3x3 depthwise convolutions, summed."""

    def __init__(self, d: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(d, d, k, padding=k // 2, groups=d) for k in (7, 5, 3))

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return grid + sum(conv(grid) for conv in self.convs)


class TransMIL(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.d_model
        self.embed = patch_embedding(config.feature_dim, d, config.dropout)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.layer1 = TransformerBlock(d, config.n_heads, config.mlp_ratio, config.dropout)
        self.ppeg = PPEG(d)
        self.layer2 = TransformerBlock(d, config.n_heads, config.mlp_ratio, config.dropout)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, config.n_classes)

    def forward(self, batch: Batch, *, rollout: bool = False) -> ModelOutput:
        b = batch.features.shape[0]  # bags; for one bag under several records the output is repeated
        mask = batch.patch_mask
        patches = self.embed(batch.features)  # (B, N, d)
        cls = self.cls_token.expand(b, -1, -1)  # (B, 1, d)
        first_layer = self.layer1.attention_operator(cls, patches, mask) if rollout else None
        cls, patches = self.layer1(cls, patches, mask)
        grid, index = scatter_to_grid(patches, batch.coords, mask)  # (B, d, H, W)
        patches = gather_from_grid(self.ppeg(grid), index, mask)
        cls, cls_attention = self.layer2.forward_class_token(cls, patches, mask)  # the head reads the class token only
        mean_attention = cls_attention.mean(1)  # (B, 1 + N)
        return ModelOutput(
            logits=self.head(self.norm(cls[:, 0])),
            patch_attention=renormalise(mean_attention[:, 1:]),
            patch_attention_heads=renormalise(cls_attention[:, :, 1:]),
            # the position encoding's convolution is not attention: rollout passes through it unchanged
            patch_attention_rollout=renormalise(attention_rollout(mean_attention, [first_layer])[:, 1:]) if first_layer is not None else None,
        ).expand(batch.n_rows)  # the record cannot change it
