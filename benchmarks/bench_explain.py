"""Explaining under altered records, and painting heatmaps of large slides.

1. K altered records of one slide: its feature file read once and all records run as one batch
   with the bag stored once (what `persam explain` does), against K separate full forwards (read
   the features, standardise, forward), for the models that read the record; the model-only part
   beside it. Goal: <= 0.5 of the time.
2. A heatmap of a 100k-patch slide (a 2048-px-wide thumbnail, 1024-d features are not needed):
   seconds and peak memory to paint the map and save the figure as PNG, against the 5 s and
   1 GiB goals; and the vectorised painting against painting patch by patch.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import Row, best_of

SLIDE_PATCHES = 100_000


def records_vs_separate(name: str, folder: Path, n: int = 10_000, k: int = 10, feature_dim: int = 1024) -> list[Row]:
    """One slide's K records: read once + one batch (what explain does) vs K reads + K forwards."""
    import pandas as pd

    from persam_lib.cohort.schema import FieldSchema, FieldSpec, LabelSpec
    from persam_lib.explain.attention import records_output
    from persam_lib.features.store import SlideFeatures, read_features, write_features
    from persam_lib.models import ModelConfig, create_model
    from persam_lib.models.clinical import RecordEncoder
    from persam_lib.train.checkpoint import LoadedModel
    from persam_lib.train.data import Bag, FeatureNormaliser

    rng = np.random.default_rng(0)
    side = int(n**0.5) + 1
    coords = np.stack([np.arange(n) % side, np.arange(n) // side], 1) * 256
    path = write_features(folder / f"{name}.h5", SlideFeatures("S", rng.standard_normal((n, feature_dim)).astype(np.float32), coords, 256))
    schema = FieldSchema((FieldSpec("age", "numeric"), FieldSpec("site", "categorical", ("a", "b")), FieldSpec("sex", "categorical", ("F", "M"))), LabelSpec("y", ("A", "B")))
    records = pd.DataFrame({"age": rng.uniform(20, 80, k), "site": rng.choice(["a", "b"], k), "sex": rng.choice(["F", "M"], k)})
    encoder = RecordEncoder(schema).fit(records)
    normaliser = FeatureNormaliser(np.zeros(feature_dim, np.float32), np.ones(feature_dim, np.float32))
    torch.manual_seed(0)
    config = ModelConfig(feature_dim=feature_dim, n_classes=2, field_cardinalities=encoder.cardinalities, d_model=64, n_heads=4)
    loaded = LoadedModel(name, create_model(name, config).eval(), config, encoder, normaliser)

    def one_batch(read: bool = True):
        records_output(loaded, as_bag(read_features(path) if read else cached), records)

    def separately(read: bool = True):
        for i in range(k):
            records_output(loaded, as_bag(read_features(path) if read else cached), records.iloc[i : i + 1])

    as_bag = lambda data: Bag("S", "P", data.features, data.coords, data.patch_size_level0, 0)  # noqa: E731
    cached = read_features(path)
    one_batch(), separately()  # warm-up
    return [
        Row(f"{name}: {k} records of a {n // 1000}k-patch slide, read once + one batch vs {k}x (read + forward) (ms)", best_of(one_batch) * 1000, best_of(separately) * 1000, "", "<= 0.5"),
        Row(f"  {name}: the same, model only: one batch vs {k} forwards (ms)", best_of(lambda: one_batch(False)) * 1000, best_of(lambda: separately(False)) * 1000, "", "(information)"),
    ]


def _slide_layout(patches: int, patch_size: int = 256) -> tuple[np.ndarray, tuple[int, int], float]:
    """Coordinates of ``patches`` tissue patches on a square-ish slide, its thumbnail shape and downsample."""
    side = int(np.ceil(np.sqrt(patches / 0.7)))  # tissue covers ~70% of the slide
    rng = np.random.default_rng(0)
    cells = np.sort(rng.choice(side * side, patches, replace=False))
    coords = np.stack([cells % side, cells // side], 1) * patch_size
    downsample = side * patch_size / 2048
    shape = (int(np.ceil(side * patch_size / downsample)), 2048)
    return coords, shape, downsample


def _heatmap_job(out: str) -> tuple[float, float]:
    """Paint and save one heatmap of a 100k-patch slide in a fresh process: (seconds, peak MB above the start)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.common import status_mb
    from persam_lib.plots.figures import attention_heatmap

    coords, shape, downsample = _slide_layout(SLIDE_PATCHES)
    thumbnail = np.full((*shape, 3), 240, dtype=np.uint8)
    attention = np.random.default_rng(1).dirichlet(np.ones(len(coords)))
    Path("/proc/self/clear_refs").write_text("5")
    start_mb = status_mb("VmRSS")
    start = time.perf_counter()
    fig, ax = plt.subplots(figsize=(8, 8))
    attention_heatmap(thumbnail, downsample, coords, 256, attention, ax=ax, title="100k patches")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return time.perf_counter() - start, status_mb("VmHWM") - start_mb


def heatmap_rows() -> list[Row]:
    import tempfile
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from persam_lib.plots.figures import paint_patches

    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        seconds, peak_mb = pool.submit(_heatmap_job, str(Path(tmp) / "heatmap.png")).result()
    coords, shape, downsample = _slide_layout(SLIDE_PATCHES)
    values = np.random.default_rng(1).random(len(coords))

    def per_patch():
        canvas = np.full(shape, np.nan, dtype=np.float32)
        side = max(int(round(256 / downsample)), 1)
        for (x, y), v in zip(np.floor(coords / downsample).astype(int), values):
            canvas[y : y + side, x : x + side] = v

    return [
        Row(f"heatmap of a {SLIDE_PATCHES // 1000}k-patch slide, painted and saved (s) vs goal", seconds, 5.0, "", "<= 1"),
        Row(f"heatmap of a {SLIDE_PATCHES // 1000}k-patch slide, peak memory (MB) vs goal", peak_mb, 1024.0, "", "<= 1"),
        Row("painting the patches: vectorised (s) vs patch by patch (s)", best_of(lambda: paint_patches(shape, downsample, coords, 256, values)), best_of(per_patch), "", "(information)"),
    ]


def run() -> list[Row]:
    import tempfile

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for name in ("persam", "mma_mgmu", "concat") for row in records_vs_separate(name, Path(tmp))]
    return rows + heatmap_rows()


if __name__ == "__main__":
    from benchmarks.common import print_table

    print_table("explain: altered records and heatmaps", run())
