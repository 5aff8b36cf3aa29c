"""The attention arithmetic of PersAM as its authors released it (GitHub PersAM-MIL/PersAM).

Pure functions on score tensors, so each can be checked against the formula it implements:

* `balanced_softmax`: softmax within each group of keys (patches, record tokens, class tokens),
  then the groups weighted by a softmax over their mean score (the class group's *maximum*), so the
  record's share of attention does not shrink as the bag grows (release: `BalancedSA.attention`).
* `class_token_mask`: additive mask that stops class tokens from attending to each other.
* `aggregator_maps`: the one-head sigmoid "multimodal aggregator" — for class c the patch map is
  σ(c→patch) × mean over record tokens of σ(record→patch) × mean over record tokens of σ(c→record);
  the bag's map is the maximum over classes, normalised to sum to 1 (release:
  `Multimodal_aggregator`).
* `noisy_or_attention_loss`: per class p = 1 − Π(1 − s·a_i) over the class's patch map a, against
  the one-hot label with class weights (release: `PersAM_train.train`), computed in log space so
  that it stays finite for any bag size and for maps at exactly 0 or 1.

Token order everywhere is [patches (N), record tokens (R), class tokens (C)], as in the release.
Shapes: scores (B, H, T, T) with T = N + R + C; ``patch_mask`` (B, N), True for real patches.
"""
from __future__ import annotations

import torch


def class_token_mask(n_patches: int, n_record: int, n_classes: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(T, T) additive mask: −inf where a class token would attend to another class token, else 0."""
    t = n_patches + n_record + n_classes
    mask = torch.zeros(t, t, device=device)
    blocked = ~torch.eye(n_classes, dtype=torch.bool, device=device)
    mask[-n_classes:, -n_classes:] = torch.zeros(n_classes, n_classes, device=device).masked_fill(blocked, float("-inf"))
    return mask


def balanced_softmax(scores: torch.Tensor, n_patches: int, n_record: int, patch_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Balanced attention weights (B, H, T, T) from raw scores (B, H, T, T) (masks already added).

    Within each key group the weights are a softmax; each group is then scaled by
    softmax_g(m_g), where m_g is the group's mean score over its allowed keys (for the class group,
    its maximum). Each query's weights sum to 1. Padded patches (``patch_mask`` False) get no
    weight and do not enter the patch group's mean.

    A blocked key is one whose score is −inf; the softmax of a group gives it no weight as it is, so
    the (B, H, T, T) tensor is masked once, not per group (this runs in every layer of every step).
    """
    b, _, _, t = scores.shape
    if patch_mask is not None and not bool(patch_mask.all()):  # padded patch keys: blocked like any other key
        blocked = torch.zeros(b, 1, 1, t, dtype=torch.bool, device=scores.device)
        blocked[:, 0, 0, :n_patches] = ~patch_mask
        scores = scores.masked_fill(blocked, float("-inf"))
    allowed = scores > float("-inf")  # False for blocked keys (and NaN)
    zeroed = torch.where(allowed, scores, torch.zeros((), dtype=scores.dtype, device=scores.device))
    # the groups as views cut by one split each: the backward pass joins their gradients with one
    # concatenation, where slicing would fill a zero tensor of the full size per group and add them up
    sizes = (n_patches, n_record, t - n_patches - n_record)
    weights, summaries = [], []
    for k, (s, z, a) in enumerate(zip(scores.split(sizes, -1), zeroed.split(sizes, -1), allowed.split(sizes, -1))):
        if not s.shape[-1]:
            continue
        count = a.sum(-1, keepdim=True)
        if k == 2:  # class keys: the release takes the maximum (other class tokens are masked out)
            summary = s.amax(-1, keepdim=True)
        else:
            summary = z.sum(-1, keepdim=True) / count.clamp_min(1)
        empty = count == 0
        summaries.append(summary.masked_fill(empty, float("-inf")))  # an empty group gets no share
        w = torch.softmax(s, dim=-1)
        weights.append(w.masked_fill(empty, 0.0) if bool(empty.any()) else w)  # all-blocked rows: zero, not NaN
    shares = torch.softmax(torch.cat(summaries, dim=-1), dim=-1)  # (B, H, T, groups)
    return torch.cat([w * shares[..., g : g + 1] for g, w in enumerate(weights)], dim=-1)


def aggregator_maps(rows: torch.Tensor, n_patches: int, n_record: int, n_classes: int, patch_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The multimodal aggregator's maps from one head's raw scores of the record and class queries:
    ``rows`` (B, R + C, T), the last R + C rows of the (T, T) score matrix (only they are needed).

    Returns (class_maps (B, C, N), bag_map (B, N)): class_maps[c, i] = σ(s[c, i]) ·
    mean_r σ(s[r, i]) · mean_r σ(s[c, r]) (values in [0, 1], zero on padded patches); bag_map is
    the maximum over classes normalised to sum to 1 over the real patches (what pools the patches).
    """
    a = torch.sigmoid(rows.float())
    patches = slice(0, n_patches)
    record_keys = slice(n_patches, n_patches + n_record)
    record_to_patch = a[:, :n_record, patches].mean(1, keepdim=True)  # (B, 1, N)
    class_to_record = a[:, n_record : n_record + n_classes, record_keys].mean(2, keepdim=True)  # (B, C, 1)
    class_maps = a[:, n_record : n_record + n_classes, patches] * record_to_patch * class_to_record  # (B, C, N)
    if patch_mask is not None:
        class_maps = class_maps * patch_mask[:, None, :].to(class_maps.dtype)
    bag = class_maps.amax(1)
    return class_maps, bag / (bag.sum(-1, keepdim=True) + 1e-6)


def noisy_or_attention_loss(class_maps: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None, scale: float = 0.05, patch_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over bags of the class-weighted binary cross-entropy between p_c = 1 − Π_i(1 − scale·a_ci)
    and the one-hot label.

    ``class_maps`` (B, C, N) in [0, 1]; ``labels`` (B,) class indices; ``class_weights`` (C, 2):
    the weight of a negative and of a positive target for each class (the release: all/(2·neg)
    and all/(2·pos)); None weighs every term 1. log(1 − p) = Σ log1p(−scale·a) is exact in log
    space, and p is clamped away from 0 before its log, so the loss and its gradients are finite
    for any N and for maps at exactly 0 or 1.
    """
    a = class_maps.float().clamp(0.0, 1.0)
    log_miss = torch.log1p(-scale * a)  # log(1 - scale·a) per patch, ≥ log(1 - scale)
    if patch_mask is not None:
        log_miss = log_miss * patch_mask[:, None, :].to(log_miss.dtype)
    log_none = log_miss.sum(-1)  # (B, C): log(1 - p)
    p = (-torch.expm1(log_none)).clamp(1e-7, 1.0)  # clamp before the log: zero gradient, never NaN, at p = 0
    target = torch.nn.functional.one_hot(labels, class_maps.shape[1]).to(a.dtype)
    terms = -(target * torch.log(p) + (1 - target) * log_none.clamp_min(-100.0))
    if class_weights is not None:
        w = class_weights.to(a.dtype)
        terms = terms * (target * w[:, 1] + (1 - target) * w[:, 0])
    return terms.mean()


def noisy_or_class_weights(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(C, 2) weights of the noisy-OR loss for a training set's labels, as the release computes them:
    for each class (a binary problem) all/(2·negatives) for a negative target, all/(2·positives) for
    a positive one (a class absent from the labels gets weight 1 for both)."""
    counts = torch.bincount(labels, minlength=n_classes).float()
    total = counts.sum()
    positive = torch.where(counts > 0, total / (2 * counts.clamp_min(1)), torch.ones_like(counts))
    negative = torch.where(counts < total, total / (2 * (total - counts).clamp_min(1)), torch.ones_like(counts))
    return torch.stack([negative, positive], dim=1)
