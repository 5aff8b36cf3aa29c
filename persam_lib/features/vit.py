"""ViT-S/16 (384-d class token), with module names of timm's ``vit_small_patch16_224``.

patch_embed.proj, cls_token, pos_embed, blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
mlp.fc2}, norm — so timm weight files (and the many pathology ViT-S checkpoints saved in timm's
layout) load as they are; timm itself is not needed. Position embeddings are interpolated when
patches are not 224 px.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTSmall16(nn.Module):
    """ViT-S/16: (B, 3, H, W) → class token (B, 384)."""

    dim = 384

    def __init__(self, img_size: int = 224, patch: int = 16, depth: int = 12, heads: int = 6):
        super().__init__()
        d = self.dim
        self.patch = patch
        self.patch_embed = PatchEmbed(patch, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (img_size // patch) ** 2, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)

    def _positions(self, n: int) -> torch.Tensor:
        grid = self.pos_embed[:, 1:]
        if grid.shape[1] == n:
            return self.pos_embed
        old, new = int(math.sqrt(grid.shape[1])), int(math.sqrt(n))
        grid = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, new * new, -1)
        return torch.cat([self.pos_embed[:, :1], grid], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x)  # (B, N, D)
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1)
        tokens = tokens + self._positions(tokens.shape[1] - 1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 0]
