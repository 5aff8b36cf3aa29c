"""Transformer building blocks shared by the attention models."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def patch_embedding(feature_dim: int, d_model: int, dropout: float) -> nn.Sequential:
    """Patch features (…, D) → tokens (…, d): linear, LayerNorm, GELU, dropout; shared by every model."""
    return nn.Sequential(nn.Linear(feature_dim, d_model), nn.LayerNorm(d_model), nn.GELU(), nn.Dropout(dropout))


def class_token_attention(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """Attention of the first query (the class token) over all keys, per head: (B, H, T).

    q, k (B, H, T, dh); computed in O(T), so it stays cheap for large bags.
    """
    scores = (q[:, :, :1].float() @ k.float().transpose(-1, -2)).squeeze(2) / math.sqrt(q.shape[-1])
    return torch.softmax(scores.masked_fill(~key_mask[:, None, :], float("-inf")), dim=-1)


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
        # without padding, no mask: SDPA can then use its fused, memory-efficient kernels (no T x T matrix)
        attn_mask = None if bool(key_mask.all()) else key_mask[:, None, None, :]  # (B, 1, 1, T), True = attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0)
        out = self.proj(out.transpose(1, 2).reshape(b, t, d))
        return out, class_token_attention(q, k, key_mask) if return_cls_attention else None


class TransformerBlock(nn.Module):
    """Pre-norm Transformer encoder block: attention and MLP, each with a residual.

    ``n_global > 0`` switches to `BipartiteAttention` (linear in the number of patches), with the
    first ``n_global`` tokens global.
    """

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: float, dropout: float, n_global: int = 0):
        super().__init__()
        self.n_global = n_global
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = BipartiteAttention(d_model, n_heads, dropout) if n_global else SelfAttention(d_model, n_heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        hidden = int(d_model * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, return_cls_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.n_global:
            attended, cls_attention = self.attn(self.norm1(x), key_mask, self.n_global, return_cls_attention)
        else:
            attended, cls_attention = self.attn(self.norm1(x), key_mask, return_cls_attention)
        x = x + self.drop(attended)
        x = x + self.drop(self.mlp(self.norm2(x)))
        return x, cls_attention


class BipartiteAttention(nn.Module):
    """Attention that is linear in the number of patches.

    The first ``n_global`` tokens (class token and clinical fields) attend to every token; each
    patch token attends to the global tokens and to itself only. The record and the image still
    attend to each other in both directions, but patches do not attend to other patches, so cost
    and memory grow as O(N * (1 + F)) instead of O(N^2).
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, n_global: int, return_cls_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # each (B, H, T, dh)
        scale = 1.0 / math.sqrt(self.head_dim)
        # global tokens -> all tokens
        attn_mask = None if bool(key_mask.all()) else key_mask[:, None, None, :]
        out_global = F.scaled_dot_product_attention(q[:, :, :n_global], k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0)
        # patch tokens -> global tokens and themselves
        qp, kp, vp = q[:, :, n_global:], k[:, :, n_global:], v[:, :, n_global:]
        shared = (qp @ k[:, :, :n_global].transpose(-1, -2)) * scale  # (B, H, N, G)
        own = (qp * kp).sum(-1, keepdim=True) * scale  # (B, H, N, 1)
        weights = torch.softmax(torch.cat([shared, own], dim=-1).float(), dim=-1).to(v.dtype)
        if self.training and self.dropout > 0:
            weights = F.dropout(weights, self.dropout)
        out_patches = weights[..., :n_global] @ v[:, :, :n_global] + weights[..., n_global:] * vp
        out = torch.cat([out_global, out_patches], dim=2)
        out = self.proj(out.transpose(1, 2).reshape(b, t, d))
        return out, class_token_attention(q, k, key_mask) if return_cls_attention else None
