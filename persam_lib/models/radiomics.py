"""Radiomics features of a region of a grey-level image: first-order statistics and GLCM texture.

Pure numpy / scikit-image functions (no gradients), used by ChexRadiNet to describe the region
its heatmap selects.
"""
from __future__ import annotations

import numpy as np
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
