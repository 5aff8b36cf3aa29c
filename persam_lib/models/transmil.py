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
from persam_lib.models.layers import TransformerBlock, patch_embedding


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

    def forward(self, batch: Batch) -> ModelOutput:
        b = batch.features.shape[0]
        patches = self.embed(batch.features)  # (B, N, d)
        key_mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=patches.device), batch.patch_mask], dim=1)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), patches], dim=1)
        tokens, _ = self.layer1(tokens, key_mask)
        grid, index = scatter_to_grid(tokens[:, 1:], batch.coords, batch.patch_mask)  # (B, d, H, W)
        tokens = torch.cat([tokens[:, :1], gather_from_grid(self.ppeg(grid), index, batch.patch_mask)], dim=1)
        tokens, cls_attention = self.layer2(tokens, key_mask, return_cls_attention=True)
        patch_attention = cls_attention.mean(1)[:, 1:]
        patch_attention = patch_attention / patch_attention.sum(-1, keepdim=True).clamp_min(1e-12)
        return ModelOutput(logits=self.head(self.norm(tokens[:, 0])), patch_attention=patch_attention)
