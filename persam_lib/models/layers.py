"""Transformer building blocks shared by the attention models."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    """Multi-head self-attention on `scaled_dot_product_attention` (fused kernels where available).

    When asked, it also returns the attention of the first token (the class token) over all
    tokens, per head, computed in O(T) so it stays cheap for large bags.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, return_cls_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # each (B, H, T, dh)
        attn_mask = key_mask[:, None, None, :]  # (B, 1, 1, T), True = attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0)
        out = self.proj(out.transpose(1, 2).reshape(b, t, d))
        cls_attention = None
        if return_cls_attention:
            scores = (q[:, :, :1].float() @ k.float().transpose(-1, -2)).squeeze(2) / math.sqrt(self.head_dim)  # (B, H, T)
            scores = scores.masked_fill(~key_mask[:, None, :], float("-inf"))
            cls_attention = torch.softmax(scores, dim=-1)
        return out, cls_attention


class TransformerBlock(nn.Module):
    """Pre-norm Transformer encoder block: attention and MLP, each with a residual."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        hidden = int(d_model * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, return_cls_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, cls_attention = self.attn(self.norm1(x), key_mask, return_cls_attention)
        x = x + self.drop(attended)
        x = x + self.drop(self.mlp(self.norm2(x)))
        return x, cls_attention
