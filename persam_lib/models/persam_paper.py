"""PersAM as its authors released it (Takagi et al.; GitHub PersAM-MIL/PersAM), on our inputs.

Tokens are [patches, record groups, class tokens] — one class token per class, which a mask
keeps from attending to each other; one record token per *group* of fields (the manifest's
``groups:``, each group's vector through Linear–ReLU–Linear, `GroupTokenizer`); the patches share
one learned position vector (no spatial position). Every layer is a Transformer layer with
*balanced* self-attention (`balanced_softmax`: a softmax within patches, within the record and
within the class tokens, the three re-weighted by a softmax of their mean scores), post-norm by
default as released (``norm="pre"`` for the other). After the layers a one-head *multimodal
aggregator* with sigmoid scores gives each class a patch map σ(class→patch) · mean σ(record→patch)
· mean σ(class→record); the maximum over classes, normalised, pools the patch tokens into the one
vector a Linear–ReLU–Dropout–Linear classifier reads (`aggregator_maps`).

`ModelOutput.patch_attention` is that normalised bag map; `class_patch_attention` holds the
per-class maps (values in [0, 1], the maps the paper shows and the noisy-OR attention loss reads).
The release's end-to-end ResNet-50 is replaced by our frozen patch features (its ``fc`` layer
compresses them to the model width as in the release). Attention is all-to-all: cost and memory
grow with (N + G + C)², which is why the authors train on sub-bags of 100 patches
(`persam_lib.train.subbags`).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from persam_lib.models.balanced_attention import aggregator_maps, balanced_softmax, class_token_mask
from persam_lib.models.base import Batch, ModelConfig, ModelOutput
from persam_lib.models.layers import Dropout
from persam_lib.models.record_groups import GroupTokenizer


class BalancedLayer(nn.Module):
    """One Transformer layer with balanced multi-head self-attention (post- or pre-norm)."""

    def __init__(self, d: int, heads: int, ff: int, dropout: float, norm: str):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Sequential(nn.Linear(d, d), nn.Dropout(dropout))
        self.attn_drop = nn.Dropout(dropout)
        self.ffn = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff, d), nn.Dropout(dropout))
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.pre_norm = norm == "pre"

    def attention(self, x: torch.Tensor, mask: torch.Tensor, n_patches: int, n_record: int, patch_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, d = x.shape
        q, k, v = (part.view(b, t, self.heads, d // self.heads).transpose(1, 2) for part in self.qkv(x).chunk(3, dim=-1))  # (B, H, T, dh)
        scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(d // self.heads) + mask  # (B, H, T, T)
        weights = balanced_softmax(scores, n_patches, n_record, patch_mask)
        out = (self.attn_drop(weights).to(v.dtype) @ v).transpose(1, 2).reshape(b, t, d)
        return self.out(out), weights

    def forward(self, x: torch.Tensor, mask: torch.Tensor, n_patches: int, n_record: int, patch_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pre_norm:
            attended, weights = self.attention(self.norm1(x), mask, n_patches, n_record, patch_mask)
            x = x + attended
            return x + self.ffn(self.norm2(x)), weights
        attended, weights = self.attention(x, mask, n_patches, n_record, patch_mask)
        x = self.norm1(x + attended)
        return self.norm2(x + self.ffn(x)), weights


class PersAMPaper(nn.Module):
    """The published PersAM over a bag of patch features and the record's groups."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        d, c = config.d_model, config.n_classes
        groups = config.record_groups or tuple((j,) for j in range(len(config.field_cardinalities)))
        self.n_groups = len(groups)
        self.fc = nn.Linear(config.feature_dim, d)  # the release's dimension compression
        self.record = GroupTokenizer(config.field_cardinalities, groups, d) if groups else None
        self.patch_position = nn.Parameter(torch.randn(1, 1, d))  # one vector shared by every patch
        self.record_position = nn.Parameter(torch.randn(1, max(self.n_groups, 1), d))
        self.class_tokens = nn.Parameter(torch.randn(1, c, d))
        self.norm_patch, self.norm_patch_position, self.norm_patch_all = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.norm_record, self.norm_record_position, self.norm_record_all = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.norm_class = nn.LayerNorm(d)
        self.drop_patch, self.drop_record = Dropout(config.dropout), nn.Dropout(config.dropout)
        ff = max(int(round(config.mlp_ratio * d)), 1)
        self.layers = nn.ModuleList(BalancedLayer(d, config.n_heads, ff, config.dropout, config.norm) for _ in range(config.n_layers))
        self.aggregator_qkv = nn.Linear(d, 3 * d)  # one head, sigmoid scores
        self.aggregator_drop = nn.Dropout(config.dropout)
        self.norm_out = nn.LayerNorm(d)
        self.classifier = nn.Sequential(nn.Linear(d, d // 2), nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(d // 2, c))

    def tokens(self, batch: Batch) -> torch.Tensor:
        """[patches (N), record groups (G), class tokens (C)] → (B, N + G + C, d), for B records."""
        rows = batch.n_rows
        patches = self.norm_patch(self.fc(batch.features))  # (B or 1, N, d)
        patches = self.drop_patch(self.norm_patch_all(patches + self.norm_patch_position(self.patch_position)))
        parts = [patches.expand(rows, -1, -1)]
        if self.record is not None:
            record = self.norm_record(self.record(batch.codes, batch.values))  # (B, G, d)
            parts.append(self.drop_record(self.norm_record_all(record + self.norm_record_position(self.record_position))))
        parts.append(self.norm_class(self.class_tokens).expand(rows, -1, -1))
        return torch.cat(parts, dim=1)

    def forward(self, batch: Batch, *, rollout: bool = False) -> ModelOutput:
        n, g, c = batch.features.shape[1], self.n_groups if self.record is not None else 0, self.config.n_classes
        patch_mask = batch.patch_mask.expand(batch.n_rows, -1)
        x = self.tokens(batch)
        padding = torch.zeros(patch_mask.shape[0], 1, 1, x.shape[1], device=x.device)
        padding[:, 0, 0, :n] = torch.where(patch_mask, 0.0, float("-inf"))
        mask = class_token_mask(n, g, c, device=x.device) + padding  # (B, 1, T, T)
        flow = None  # attention rollout (Abnar & Zuidema): Π over layers of (W + I) / 2, heads averaged
        for layer in self.layers:
            x, weights = layer(x, mask, n, g, patch_mask)
            if rollout:
                step = 0.5 * weights.mean(1) + 0.5 * torch.eye(x.shape[1], device=x.device)
                flow = step if flow is None else step @ flow
        q, k, v = self.aggregator_qkv(x).chunk(3, dim=-1)
        rows = (q[:, n:].float() @ k.float().transpose(-1, -2)) / math.sqrt(x.shape[-1])  # (B, G + C, T): record and class queries
        class_maps, bag_map = aggregator_maps(rows, n, g, c, patch_mask) if g else _no_record_maps(rows, n, c, patch_mask)
        pooled = (self.aggregator_drop(bag_map)[:, None, :].to(v.dtype) @ v[:, :n]).squeeze(1)  # (B, d)
        logits = self.classifier(self.norm_out(pooled))
        rolled = None
        if rollout:  # the bag map pools the last layer's patch tokens: carry it back through the layers
            through = bag_map[:, None, :] @ flow[:, :n, :] if flow is not None else torch.nn.functional.pad(bag_map, (0, x.shape[1] - n))[:, None]
            rolled = through[:, 0, :n] * patch_mask
            rolled = rolled / rolled.sum(-1, keepdim=True).clamp_min(1e-12)
        return ModelOutput(logits, bag_map, None, patch_attention_heads=bag_map[:, None], patch_attention_rollout=rolled, class_patch_attention=class_maps)


def _no_record_maps(rows: torch.Tensor, n: int, c: int, patch_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Class maps σ(class→patch) when the record has no field (an image-only ablation)."""
    class_maps = torch.sigmoid(rows[:, :c, :n].float()) * patch_mask[:, None, :]
    bag = class_maps.amax(1)
    return class_maps, bag / (bag.sum(-1, keepdim=True) + 1e-6)
