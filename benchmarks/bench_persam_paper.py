"""The published PersAM (persam_paper) beside ours: training step time and peak memory against bag size.

Both use the benchmark configuration of `bench_models` (feature_dim 1024, d_model 128, 4 heads,
2 layers), one bag per step, AdamW. persam_paper's attention is all-to-all over patches, record
groups and class tokens, so each layer holds several (heads, T, T) float tensors; a size whose
estimate exceeds the memory budget is reported as not fitting instead of run. The last row is
what sub-bags change: a step on a 100-patch sub-bag (the authors' recipe) against a step on the
whole bag.
"""
from __future__ import annotations

import torch

from benchmarks.bench_models import _setup, peak_memory_mb
from benchmarks.common import Row
from persam_lib.models.cost import fastest_seconds

BUDGET_GB = 8.0  # CPU machines here have 24 GB; leave room for everything else
SCORE_COPIES = 8  # (heads, T, T) float32 tensors alive per layer in forward + backward (scores, masks, group softmaxes, weights)


def estimated_gb(n: int, heads: int = 4, layers: int = 2, groups: int = 4, classes: int = 2) -> float:
    """Rough peak of persam_paper's attention tensors for a bag of ``n`` patches (GB)."""
    t = n + groups + classes
    return layers * heads * t * t * 4 * SCORE_COPIES / 2**30


def run() -> list[Row]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(2)
    budget = BUDGET_GB if device.type == "cpu" else torch.cuda.get_device_properties(0).total_memory / 2**30 * 0.8
    rows = []
    for n in (1_000, 5_000, 20_000):
        if estimated_gb(n) > budget:
            rows.append(Row(f"N={n:>6}: persam_paper does not fit: ~{estimated_gb(n):.0f} GB of attention vs budget (GB)", estimated_gb(n), budget, "", "all-to-all: use sub-bags"))
            continue
        paper_s = fastest_seconds(_setup("persam_paper", n, device))
        ours_s = fastest_seconds(_setup("persam", n, device))
        rows.append(Row(f"N={n:>6}: persam_paper step (ms) vs our persam step (ms), {device.type}", paper_s * 1000, ours_s * 1000, "", "(information)"))
        paper_mb, ours_mb = peak_memory_mb("persam_paper", n), peak_memory_mb("persam", n)
        if paper_mb and ours_mb:
            rows.append(Row(f"N={n:>6}: persam_paper peak memory (MB) vs our persam (MB)", paper_mb, ours_mb, "", "(information)"))
    sub = fastest_seconds(_setup("persam_paper", 100, device))
    whole = fastest_seconds(_setup("persam_paper", 5_000, device))
    rows.append(Row("persam_paper: step on a 5k-patch bag (ms) vs on a 100-patch sub-bag (ms)", whole * 1000, sub * 1000, "", "(information)"))
    return rows
