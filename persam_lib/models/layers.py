"""Transformer building blocks shared by the attention models.

Blocks work on two token streams: a few *global* tokens (the class token, and for PersAM one token
per clinical field) and the N *patch* tokens of a bag. Two attention wirings:

* `FullAttention`: every token attends to every token (`scaled_dot_product_attention`, fused
  kernels where available); O(N²).
* `BipartiteAttention`: global tokens attend to every token, each patch token to the global
  tokens and to itself; O(N·G). Its products with the few global tokens are single matrix
  products against block-diagonal matrices, so the N patch tokens stay in the projection's
  (N, H·dh) layout and are never reshuffled per head or concatenated with the global tokens.

A block can also update the class token alone (what the last layer of a classifier needs; O(N·d·H),
the cost of attention pooling, instead of a full layer's O(N·d²)) and hand out its attention matrix as an `AttentionOperator`, whose
product with a row vector gives attention rollout (O(N) for the bipartite wiring).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Rows of a dense attention matrix materialised at once by `AttentionOperator` (full wiring), per
# batch element and head: bounds rollout memory to about this many floats times the token count.
ROLLOUT_CHUNK_ROWS = 1024


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout: zero each element with probability ``p``, scale the rest by 1 / (1 - p).

    On CPU the keep-mask is cut from 16-bit slices of 64-bit random integers (p is rounded to a
    multiple of 1/65536): `F.dropout` draws one Bernoulli sample per element there, which on bags
    of 10k+ patches costs as much as a large matrix product; this costs a fifth of it. Other
    devices use `F.dropout` (fused kernels). Seeded by `torch.manual_seed` like any dropout.
    """
    if not training or p <= 0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1).view(torch.int16)[:n]  # uniform 16-bit values
    keep = (bits >= round(p * 65536) - 32768).view(x.shape)
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))


class Dropout(nn.Module):
    """`dropout` as a module, for tensors the size of the bag (see `dropout` for why not nn.Dropout)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def patch_embedding(feature_dim: int, d_model: int, dropout: float) -> nn.Sequential:
    """Patch features (…, D) → tokens (…, d): linear, LayerNorm, GELU, dropout; shared by every model."""
    return nn.Sequential(nn.Linear(feature_dim, d_model), nn.LayerNorm(d_model), nn.GELU(), Dropout(dropout))


def renormalise(weights: torch.Tensor) -> torch.Tensor:
    """Scale non-negative weights to sum to 1 over the last dimension (all-zero rows stay zero)."""
    return weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)


def _masked_scores(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """Scaled dot products q·k (B, H, Tq, T) in float32, −inf where the key is padding."""
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))


def _by_head(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, H*dh) → (B, H, T, dh) (a view)."""
    b, t, d = x.shape
    return x.view(b, t, n_heads, d // n_heads).transpose(1, 2)


def _block_diagonal(x: torch.Tensor, n_heads: int, heads_first: bool) -> torch.Tensor:
    """A few tokens' per-head vectors x (B, G, H*dh) as one block-diagonal matrix per batch element.

    ``heads_first=True`` gives (B, H*dh, H*G): column (h, j) holds token j's head-h vector in the
    rows of head h, so ``y @ it`` (y (B, N, H*dh)) is every head's dot product of every row of y
    with every token, in one matrix product. ``False`` gives the (B, H*G, H*dh) layout, so that
    ``w @ it`` (w (B, N, H*G)) sums each head's token vectors weighted by that head's weights.
    """
    b, g, d = x.shape
    eye = torch.eye(n_heads, dtype=x.dtype, device=x.device)
    per_head = x.view(b, g, n_heads, d // n_heads)
    if heads_first:
        return torch.einsum("bjhc,hk->bhckj", per_head, eye).reshape(b, d, n_heads * g)
    return torch.einsum("bjhc,hk->bhjkc", per_head, eye).reshape(b, n_heads * g, d)


def _patch_row_weights(q_patches: torch.Tensor, k_patches: torch.Tensor, k_global: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Bipartite wiring: each patch's attention over [the G global tokens, itself], (B, N, H, G + 1), float32."""
    bp, n, d = q_patches.shape  # bp is 1 for one bag shared by several records (then B comes from k_global)
    g, dh = k_global.shape[1], d // n_heads
    shared = q_patches @ _block_diagonal(k_global, n_heads, heads_first=True)  # (B, N, H*G)
    shared = shared.view(shared.shape[0], n, n_heads, g)
    own = (q_patches.view(bp, n, n_heads, dh) * k_patches.view(bp, n, n_heads, dh)).sum(-1, keepdim=True)  # (Bp, N, H, 1)
    return _softmax_over_few(torch.cat([shared, own.expand(shared.shape[0], -1, -1, -1)], dim=-1).float() / math.sqrt(dh))


def _softmax_over_few(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over a short last axis (a handful of tokens) as plain element-wise operations:
    `torch.softmax` vectorises along that axis, which for 5-10 entries runs ~5x slower on CPU."""
    exp = (scores - scores.amax(-1, keepdim=True).detach()).exp()  # the shift changes neither value nor gradient
    return exp / exp.sum(-1, keepdim=True)


def _global_row_attention(
    q: torch.Tensor, k_global: torch.Tensor, v_global: torch.Tensor, k_patches: torch.Tensor, v_patches: torch.Tensor, patch_mask: torch.Tensor, n_heads: int, p: float, training: bool,
    class_sees_patches: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries q (B, Q, d) of global tokens attending to every token (globals, then patches).

    Returns the output (B, Q, d) and the attention weights before dropout (B, H, Q, G + N). The
    patches' keys and values may have batch size 1: one bag shared by B records.
    """
    b, n_queries, d = q.shape
    g, dh = k_global.shape[1], d // n_heads
    queries = _block_diagonal(q, n_heads, heads_first=False)  # (B, H*Q, d); keys along the last axis below, so the softmax runs over contiguous memory
    scores_patches = (queries @ k_patches.transpose(1, 2)).float().masked_fill(~patch_mask[:, None, :], float("-inf"))  # (B, H*Q, N)
    if not class_sees_patches:  # the class token (query 0 of each head: rows h*Q) attends to the global tokens only
        blocked = torch.zeros(n_heads, n_queries, 1, dtype=torch.bool, device=q.device)
        blocked[:, 0] = True
        scores_patches = scores_patches.masked_fill(blocked.view(1, n_heads * n_queries, 1), float("-inf"))
    scores = torch.cat([(queries @ k_global.transpose(1, 2)).float(), scores_patches], dim=2) / math.sqrt(dh)  # (B, H*Q, G + N)
    weights = torch.softmax(scores, dim=-1)
    kept = dropout(weights, p, training).to(v_patches.dtype)
    out = kept[..., :g] @ v_global + kept[..., g:] @ v_patches  # (B, H*Q, d): all heads against all heads
    out = torch.diagonal(out.view(b, n_heads, n_queries, n_heads, dh), dim1=1, dim2=3)  # (B, Q, dh, H): each head's own block
    return out.permute(0, 1, 3, 2).reshape(b, n_queries, d), weights.view(b, n_heads, n_queries, g + k_patches.shape[1])


@dataclass
class AttentionOperator:
    """One layer's attention matrix, averaged over heads, kept implicit (never T x T in memory).

    q, k (B, T, H*dh) are the layer's queries and keys over [global tokens, patch tokens],
    key_mask (B, T) marks real tokens, and ``n_global`` is 0 for full attention or the number of
    global tokens of the bipartite wiring; ``class_key_limit`` > 0 is a layer whose class token
    (row 0) attends to the first ``class_key_limit`` tokens (the global tokens) alone.
    """

    q: torch.Tensor
    k: torch.Tensor
    key_mask: torch.Tensor
    n_heads: int
    n_global: int
    class_key_limit: int = 0

    def left_multiply(self, row: torch.Tensor) -> torch.Tensor:
        """row (B, T) → row @ A (B, T), where A is the head-averaged attention (rows sum to 1).

        O(T) for the bipartite wiring; O(T²) time but bounded memory for full attention.
        """
        row = row.float()
        q, k = _by_head(self.q, self.n_heads), _by_head(self.k, self.n_heads)
        if self.n_global == 0:
            out = torch.zeros_like(row)
            for start in range(0, row.shape[1], ROLLOUT_CHUNK_ROWS):
                stop = start + ROLLOUT_CHUNK_ROWS
                scores = _masked_scores(q[:, :, start:stop], k, self.key_mask)
                if self.class_key_limit and start == 0:
                    scores[:, :, 0, self.class_key_limit :] = float("-inf")
                weights = torch.softmax(scores, -1).nan_to_num(0.0).mean(1)  # (B, c, T)
                out += torch.einsum("bc,bct->bt", row[:, start:stop], weights)
            return out
        g = self.n_global
        scores = _masked_scores(q[:, :, :g], k, self.key_mask)  # (B, H, G, T)
        if self.class_key_limit:
            scores[:, :, 0, self.class_key_limit :] = float("-inf")
        global_rows = torch.softmax(scores, -1).mean(1)  # (B, G, T)
        out = torch.einsum("bg,bgt->bt", row[:, :g], global_rows)
        patch_rows = _patch_row_weights(self.q[:, g:], self.k[:, g:], self.k[:, :g], self.n_heads).mean(2)  # (B, N, G + 1)
        out[:, :g] += torch.einsum("bn,bng->bg", row[:, g:], patch_rows[..., :g])
        out[:, g:] += row[:, g:] * patch_rows[..., g]
        return out


class _Projections(nn.Module):
    """The query/key/value and output projections every attention wiring shares."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward_class_token(self, globals_: torch.Tensor, patches: torch.Tensor, patch_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The class token (the first global token) attending to every token, as in both wirings.

        Returns its output (B, 1, d) and its attention over [globals, patches] (B, H, G + N). The
        patches' keys and values are never formed: with one query q per head,
        q·(W_k x + b_k) = (W_kᵀ q)·x + q·b_k and Σ w (W_v x + b_v) = W_v (Σ w x) + b_v Σ w, so the
        patch side costs O(N·d·H), like attention pooling (ABMIL), instead of O(N·d²).
        """
        b, (n, d) = globals_.shape[0], patches.shape[1:]  # patches may be one bag shared by the B records
        h, dh = self.n_heads, self.head_dim
        w_q, w_k, w_v = self.qkv.weight.split(d)  # each (d, d)
        b_q, b_k, b_v = self.qkv.bias.split(d)
        q = F.linear(globals_[:, :1], w_q, b_q).view(b, h, dh)  # (B, H, dh)
        key_directions = torch.einsum("hcd,bhc->bhd", w_k.view(h, dh, d), q)  # (B, H, d)
        key_bias = (b_k.view(h, dh) * q).sum(-1)[..., None]  # (B, H, 1)
        scores_patches = (key_directions @ patches.transpose(1, 2) + key_bias).float().masked_fill(~patch_mask[:, None, :], float("-inf"))  # (B, H, N)
        scores = torch.cat([(key_directions @ globals_.transpose(1, 2) + key_bias).float(), scores_patches], dim=2) / math.sqrt(dh)  # (B, H, G + N)
        weights = torch.softmax(scores, dim=-1)
        kept = dropout(weights, self.dropout, self.training).to(patches.dtype)
        g = globals_.shape[1]
        pooled = kept[..., :g] @ globals_ + kept[..., g:] @ patches  # (B, H, d): per head, the weighted mean input
        out = torch.einsum("hcd,bhd->bhc", w_v.view(h, dh, d), pooled) + b_v.view(h, dh) * kept.sum(-1)[..., None]  # (B, H, dh)
        return self.proj(out.reshape(b, 1, d)), weights


class FullAttention(_Projections):
    """Every token attends to every token, on `scaled_dot_product_attention`; O(T²)."""

    def forward(self, globals_: torch.Tensor, patches: torch.Tensor, patch_mask: torch.Tensor, class_sees_patches: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, G, d), (B, N, d) → the attended global and patch tokens, same shapes. With
        ``class_sees_patches=False`` the class token (global token 0) attends to the global tokens only."""
        x = torch.cat([globals_, _rows_of(patches, globals_)], dim=1)
        b, t, d = x.shape
        g = globals_.shape[1]
        q, k, v = (_by_head(part, self.n_heads) for part in self.qkv(x).split(d, dim=-1))  # each (B, H, T, dh)
        # without padding, no mask: SDPA can then use its fused, memory-efficient kernels (no T x T matrix)
        attn_mask = None if bool(patch_mask.all()) else _key_mask(globals_, patch_mask)[:, None, None, :]
        if not class_sees_patches:
            rows = torch.ones(1, 1, t, t, dtype=torch.bool, device=x.device)
            rows[..., 0, g:] = False
            attn_mask = rows if attn_mask is None else attn_mask & rows
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0)
        out = self.proj(out.transpose(1, 2).reshape(b, t, d))
        return out[:, :g], out[:, g:]

    def operator(self, globals_: torch.Tensor, patches: torch.Tensor, patch_mask: torch.Tensor, class_sees_patches: bool = True) -> AttentionOperator:
        x = torch.cat([globals_, _rows_of(patches, globals_)], dim=1)
        q, k, _ = self.qkv(x).detach().split(x.shape[-1], dim=-1)
        return AttentionOperator(q, k, _key_mask(globals_, patch_mask), self.n_heads, 0, 0 if class_sees_patches else globals_.shape[1])


class BipartiteAttention(_Projections):
    """Global tokens attend to every token; each patch token to the global tokens and itself: O(N·G)."""

    def forward(self, globals_: torch.Tensor, patches: torch.Tensor, patch_mask: torch.Tensor, class_sees_patches: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, G, d), (B, N, d) → the attended global and patch tokens, same shapes. With
        ``class_sees_patches=False`` the class token (global token 0) attends to the global tokens only."""
        bp, n, d = patches.shape  # bp = 1 for one bag shared by all B records: its projections are computed once
        b, g = globals_.shape[:2]
        h, dh, p = self.n_heads, self.head_dim, self.dropout if self.training else 0.0
        q_g, k_g, v_g = self.qkv(globals_).split(d, dim=-1)  # each (B, G, d)
        q_p, k_p, v_p = self.qkv(patches).split(d, dim=-1)  # each (Bp, N, d)
        out_g, _ = _global_row_attention(q_g, k_g, v_g, k_p, v_p, patch_mask, h, p, self.training, class_sees_patches)
        weights = dropout(_patch_row_weights(q_p, k_p, k_g, h), p, self.training).to(v_p.dtype)  # (B, N, H, G + 1)
        from_globals = weights[..., :g].reshape(b, n, h * g) @ _block_diagonal(v_g, h, heads_first=False)  # (B, N, d)
        own = (weights[..., g:] * v_p.view(bp, n, h, dh)).view(b, n, d)
        return self.proj(out_g), self.proj(from_globals + own)

    def operator(self, globals_: torch.Tensor, patches: torch.Tensor, patch_mask: torch.Tensor, class_sees_patches: bool = True) -> AttentionOperator:
        d = patches.shape[-1]
        q_g, k_g, _ = self.qkv(globals_).detach().split(d, dim=-1)
        q_p, k_p, _ = self.qkv(patches).detach().split(d, dim=-1)  # once, also for one bag shared by several records
        q = torch.cat([q_g, _rows_of(q_p, globals_)], dim=1)
        k = torch.cat([k_g, _rows_of(k_p, globals_)], dim=1)
        return AttentionOperator(q, k, _key_mask(globals_, patch_mask), self.n_heads, globals_.shape[1], 0 if class_sees_patches else globals_.shape[1])


def _key_mask(globals_: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
    """(B, G + N): True for the global tokens and the real patches."""
    return torch.cat([torch.ones(globals_.shape[:2], dtype=torch.bool, device=patch_mask.device), _rows_of(patch_mask, globals_)], dim=1)


def _rows_of(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` with as many rows as ``like`` (a view; for one bag shared by several records)."""
    return x if x.shape[0] == like.shape[0] else x.expand(like.shape[0], *x.shape[1:])


class TransformerBlock(nn.Module):
    """Pre-norm Transformer encoder block over global and patch tokens: attention and MLP, each with a residual.

    ``bipartite=True`` uses `BipartiteAttention` (linear in the number of patches), else
    `FullAttention`. Norms and MLP act on each token alone, so they run on each stream apart.
    """

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: float, dropout: float, bipartite: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = (BipartiteAttention if bipartite else FullAttention)(d_model, n_heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        hidden = int(d_model * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), Dropout(dropout), nn.Linear(hidden, d_model))
        self.drop = Dropout(dropout)

    def forward(self, globals_: torch.Tensor, patches: torch.Tensor, patch_mask: torch.Tensor, class_sees_patches: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Global tokens (B, G, d), patch tokens (B, N, d) and the patch mask (B, N) → the updated global and patch tokens."""
        if class_sees_patches:
            attended_g, attended_p = self.attn(self.norm1(globals_), self.norm1(patches), patch_mask)
        else:
            attended_g, attended_p = self.attn(self.norm1(globals_), self.norm1(patches), patch_mask, class_sees_patches)
        globals_, patches = globals_ + self.drop(attended_g), patches + self.drop(attended_p)
        return globals_ + self.drop(self.mlp(self.norm2(globals_))), patches + self.drop(self.mlp(self.norm2(patches)))

    def forward_class_token(self, globals_: torch.Tensor, patches: torch.Tensor, patch_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Only the class token's (the first global token's) output (B, 1, d), and its attention
        over all tokens [globals, patches] (B, H, G + N). A classifier's last block needs nothing else."""
        attended, attention = self.attn.forward_class_token(self.norm1(globals_), self.norm1(patches), patch_mask)
        cls = globals_[:, :1] + self.drop(attended)
        return cls + self.drop(self.mlp(self.norm2(cls))), attention

    def attention_operator(self, globals_: torch.Tensor, patches: torch.Tensor, patch_mask: torch.Tensor, class_sees_patches: bool = True) -> AttentionOperator:
        """The attention this block applies to its input, for attention rollout."""
        return self.attn.operator(self.norm1(globals_), self.norm1(patches), patch_mask, class_sees_patches)


def attention_rollout(first_row_of_last_layer: torch.Tensor, earlier_layers: list[AttentionOperator]) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020) of the class token over all tokens: (B, T).

    Each layer's head-averaged attention A is mixed with the identity for the residual,
    0.5·A + 0.5·I, and the layers are multiplied from the last to the first. Only the class
    token's row is propagated, so each layer costs one `AttentionOperator.left_multiply`.
    ``first_row_of_last_layer`` (B, T) is the last layer's head-averaged class-token attention.
    """
    row = torch.zeros_like(first_row_of_last_layer, dtype=torch.float32)
    row[:, 0] = 1.0
    row = 0.5 * first_row_of_last_layer.float() + 0.5 * row
    for layer in reversed(earlier_layers):
        row = 0.5 * layer.left_multiply(row) + 0.5 * row
    return row
