"""Radiomics features of a region of a grey-level image: first-order statistics and GLCM texture.

`radiomics` (numpy / scikit-image) is the reference; `radiomics_batch` computes the same for a
batch in torch, on the model's device (no gradients), and is what ChexRadiNet uses to describe the
region its heatmap selects.
"""
from __future__ import annotations

import numpy as np
import torch
from skimage.feature import graycomatrix, graycoprops

FIRST_ORDER = ("mean", "std", "skewness", "kurtosis", "p10", "p90", "entropy", "area_fraction")
GLCM = ("contrast", "homogeneity", "energy", "correlation")
N_FEATURES = len(FIRST_ORDER) + len(GLCM)


def radiomics(image: np.ndarray, region: np.ndarray, levels: int = 16) -> np.ndarray:
    """First-order statistics and GLCM texture (distance 1, four angles, averaged) of ``image`` in ``region``.

    ``image`` is any real-valued 2-D array; it is quantised to ``levels`` grey levels over the
    region's own range. Returns ``N_FEATURES`` floats; zeros for an empty region.
    """
    values = image[region]
    if values.size == 0:
        return np.zeros(N_FEATURES, dtype=np.float32)
    mean, std = float(values.mean()), float(values.std())
    centred = (values - mean) / (std + 1e-8)
    hist, _ = np.histogram(values, bins=levels)
    p = hist / hist.sum()
    entropy = float(-(p[p > 0] * np.log2(p[p > 0])).sum())
    first = [mean, std, float((centred**3).mean()), float((centred**4).mean() - 3), float(np.quantile(values, 0.1)), float(np.quantile(values, 0.9)), entropy, float(region.mean())]
    lo, hi = float(values.min()), float(values.max())
    quantised = np.zeros(image.shape, dtype=np.uint8)
    if hi > lo:
        quantised = np.clip(((image - lo) / (hi - lo) * (levels - 1)).round(), 0, levels - 1).astype(np.uint8) + 1
    quantised[~region] = 0  # level 0 = outside the region, dropped from the matrix below
    matrix = graycomatrix(quantised, distances=[1], angles=[0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=levels + 1, symmetric=True, normed=False)
    matrix = matrix[1:, 1:].astype(np.float64)
    totals = matrix.sum(axis=(0, 1), keepdims=True)
    if totals.sum() == 0:
        texture = [0.0, 1.0, 1.0, 0.0]  # a region without neighbouring pairs: flat texture
    else:
        normed = matrix / np.maximum(totals, 1e-12)
        texture = [float(np.nan_to_num(graycoprops(normed, prop)).mean()) for prop in GLCM]
    return np.asarray(first + texture, dtype=np.float32)


_OFFSETS = ((0, 1), (1, 1), (1, 0), (1, -1))  # (row, column) of angles 0, 45, 90, 135 degrees at distance 1, as graycomatrix


def radiomics_batch(images: torch.Tensor, regions: torch.Tensor, levels: int = 16) -> torch.Tensor:
    """`radiomics` of a batch, vectorised in torch (float32) on the images' device: images (B, H, W)
    real, regions (B, H, W) bool → (B, N_FEATURES) float32, equal to `radiomics` image by image up
    to float32 rounding (the numpy version is the reference it is tested against). No host round trip, so a model on a GPU
    computes its radiomics there."""
    x = images.float()
    region = regions.bool()
    b, h, w = x.shape
    n = region.flatten(1).sum(1)  # (B,)
    has = n > 0
    count = n.clamp_min(1).to(x.dtype)
    inside = torch.where(region, x, torch.zeros_like(x))
    mean = inside.flatten(1).sum(1) / count
    centred_raw = torch.where(region, x - mean[:, None, None], torch.zeros_like(x)).flatten(1)
    std = (centred_raw.pow(2).sum(1) / count).sqrt()
    centred = centred_raw / (std[:, None] + 1e-8)
    skewness = centred.pow(3).sum(1) / count
    kurtosis = centred.pow(4).sum(1) / count - 3
    big = torch.finfo(x.dtype).max
    lo = torch.where(region, x, torch.full_like(x, big)).flatten(1).amin(1)
    hi = torch.where(region, x, torch.full_like(x, -big)).flatten(1).amax(1)
    lo, hi = torch.where(has, lo, 0.0), torch.where(has, hi, 0.0)
    ordered = torch.where(region, x, torch.full_like(x, big)).flatten(1).sort(1).values  # region values first

    def quantile(q: float) -> torch.Tensor:  # numpy's "linear" method on each image's own values
        position = q * (count - 1)
        below = position.floor().long()
        above = position.ceil().long()
        low, high = ordered.gather(1, below[:, None])[:, 0], ordered.gather(1, above[:, None])[:, 0]
        return low + (high - low) * (position - below)

    span = (hi - lo)[:, None, None]
    flat = span == 0
    bins = torch.where(flat, torch.full_like(x, levels // 2), ((x - lo[:, None, None]) / torch.where(flat, 1.0, span) * levels).floor().clamp(0, levels - 1))
    hist = torch.zeros(b, levels, dtype=x.dtype, device=x.device).scatter_add_(1, bins.long().flatten(1), region.flatten(1).to(x.dtype))
    p = hist / count[:, None]
    entropy = -torch.where(p > 0, p * torch.log2(p.clamp_min(1e-30)), torch.zeros_like(p)).sum(1)
    first = torch.stack([mean, std, skewness, kurtosis, quantile(0.1), quantile(0.9), entropy, region.flatten(1).to(x.dtype).mean(1)], dim=1)

    grey = torch.where(flat, torch.zeros_like(x), ((x - lo[:, None, None]) / torch.where(flat, 1.0, span) * (levels - 1)).round().clamp(0, levels - 1) + 1)
    grey = torch.where(region, grey, torch.zeros_like(grey)).long()  # level 0: outside the region
    ii, jj = torch.meshgrid(torch.arange(levels, device=x.device, dtype=x.dtype), torch.arange(levels, device=x.device, dtype=x.dtype), indexing="ij")
    texture = torch.zeros(b, 4, dtype=x.dtype, device=x.device)
    any_pairs = torch.zeros(b, dtype=torch.bool, device=x.device)
    for dr, dc in _OFFSETS:
        a = grey[:, : h - dr, max(0, -dc) : w - max(0, dc)]
        c = grey[:, dr:, max(0, dc) : w - max(0, -dc) if dc < 0 else w]
        valid = (a > 0) & (c > 0)
        pair = ((a - 1) * levels + (c - 1)).clamp_min(0)
        counts = torch.zeros(b, levels * levels, dtype=x.dtype, device=x.device).scatter_add_(1, pair.flatten(1), valid.flatten(1).to(x.dtype)).view(b, levels, levels)
        counts = counts + counts.transpose(1, 2)  # symmetric
        total = counts.sum((1, 2))
        any_pairs |= total > 0
        prob = counts / total.clamp_min(1e-12)[:, None, None]
        contrast = (prob * (ii - jj) ** 2).sum((1, 2))
        homogeneity = (prob / (1 + (ii - jj) ** 2)).sum((1, 2))
        energy = prob.pow(2).sum((1, 2)).sqrt()
        mean_i, mean_j = (prob * ii).sum((1, 2)), (prob * jj).sum((1, 2))
        di, dj = ii - mean_i[:, None, None], jj - mean_j[:, None, None]
        std_i, std_j = (prob * di**2).sum((1, 2)).sqrt(), (prob * dj**2).sum((1, 2)).sqrt()
        degenerate = (std_i < 1e-15) | (std_j < 1e-15)
        correlation = torch.where(degenerate, 1.0, (prob * di * dj).sum((1, 2)) / torch.where(degenerate, 1.0, std_i * std_j))
        texture += torch.stack([contrast, homogeneity, energy, correlation], dim=1) / 4
    flat_texture = torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=x.dtype, device=x.device)
    texture = torch.where(any_pairs[:, None], texture, flat_texture)
    out = torch.cat([first, texture], dim=1)
    return torch.where(has[:, None], out, torch.zeros_like(out)).float()
