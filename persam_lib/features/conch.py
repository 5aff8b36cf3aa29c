"""CONCH v1.5's vision tower (MahmoodLab; the patch encoder behind TITAN), in its released key layout.

A ViT-L/16 trunk with LayerScale (``init_values=1.0``) read at 448 px, whose tokens an attentional
pooler (one learned query, 8 heads, 768-d) reduces to one vector, then a LayerNorm: 768-d
features. Keys: ``trunk.*`` (timm's ViT layout), ``attn_pool_contrast.{query, ln_k, ln_q, to_q,
to_kv, to_out}``, ``ln_contrast`` — those of ``pytorch_model_vision.bin``. This follows
mahmoodlab/TRIDENT's ``model_zoo/conchv1_5``: its trunk resizes positions with the DINO formula,
and its loader fits a stored position grid to the model's 14 × 14 (bilinear), as `fit_positions` does.
CONCH v1.5 is not a timm model, so it is always built here, with or without timm.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from persam_lib.features.vit import ViTConfig, VisionTransformer, resample_positions


@dataclass(frozen=True)
class PoolerConfig:
    """The attentional pooler: ``width`` of its query and output, ``heads``, ``queries``."""

    width: int = 768
    heads: int = 8
    queries: int = 1


class AttentionalPooler(nn.Module):
    """Learned queries attend over the trunk's tokens: (B, N, C) → (B, queries, width)."""

    def __init__(self, width: int, context_dim: int, heads: int = 8, queries: int = 1):
        super().__init__()
        self.heads = heads
        self.query = nn.Parameter(torch.randn(queries, width))
        self.ln_k = nn.LayerNorm(context_dim)
        self.ln_q = nn.LayerNorm(width)
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_kv = nn.Linear(context_dim, width * 2, bias=False)
        self.to_out = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h = x.shape[0], self.heads
        q = self.to_q(self.ln_q(self.query)).expand(b, -1, -1)  # (B, Q, W)
        k, v = self.to_kv(self.ln_k(x)).chunk(2, dim=-1)  # 2 × (B, N, W)
        split = lambda t: t.view(b, t.shape[1], h, -1).transpose(1, 2)  # noqa: E731  (B, heads, T, W/heads)
        q, k, v = split(q), split(k), split(v)
        sim = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, heads, Q, N)
        attn = (sim - sim.amax(dim=-1, keepdim=True)).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, -1, h * v.shape[-1])  # (B, Q, W)
        return self.to_out(out)


class ConchVisionTower(nn.Module):
    """CONCH v1.5: (B, 3, 448, 448) → (B, 768) pooled, normalised image embedding."""

    def __init__(self, trunk: ViTConfig, pooler: PoolerConfig = PoolerConfig()):
        super().__init__()
        self.trunk = VisionTransformer(trunk)
        self.attn_pool_contrast = AttentionalPooler(pooler.width, trunk.embed_dim, pooler.heads, pooler.queries)
        self.ln_contrast = nn.LayerNorm(pooler.width)
        self.dim = pooler.width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.trunk.forward_tokens(x)  # (B, 1 + N, C)
        return self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])

    def fit_positions(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A state dict whose ``trunk.pos_embed`` was stored for another grid, fitted to the model's
        (bilinear, as CONCH v1.5's loader does); any other mismatch is left for the strict check."""
        key, expected = "trunk.pos_embed", self.trunk.pos_embed
        stored = state.get(key)
        if isinstance(stored, torch.Tensor) and stored.ndim == 3 and stored.shape[0] == 1 and stored.shape[2] == expected.shape[2] and stored.shape[1] != expected.shape[1]:
            try:
                state = {**state, key: resample_positions(stored, self.trunk.config.grid, 1, "bilinear")}
            except ValueError:
                pass  # not a square grid: the strict check names the key
        return state
