"""Extraction with slides as tasks on a Dask distributed cluster.

`extract_distributed` submits one task per unfinished slide to an existing scheduler (``address``)
or to a `LocalCluster` of ``n_workers`` processes. Every task writes its slide atomically itself
(temporary file + rename), so the guarantees are those of `extract`: finished slides are skipped on
rerun, a failed slide is recorded in ``failures.csv`` and the others go on.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from persam_lib.cohort.manifest import Cohort
from persam_lib.features.encoders import Encoder, create_encoder
from persam_lib.io.atomic import write_text_atomic
from persam_lib.features.extract import ExtractConfig, ExtractSummary, _save_mask, extract_slide
from persam_lib.features.store import feature_path, is_complete, write_features
from persam_lib.slides.reader import open_slide


def extract_distributed(cohort: Cohort, out_dir: str | Path, config: ExtractConfig = ExtractConfig(), *, address: str | None = None, n_workers: int = 2, progress: bool = True) -> ExtractSummary:
    """Extract every unfinished slide of ``cohort`` as a Dask task; returns what happened."""
    from dask.distributed import Client, LocalCluster, as_completed

    out_dir = Path(out_dir)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "extract_config.json", json.dumps(asdict(config), indent=2))
    summary = ExtractSummary()
    todo = []
    for row in cohort.slides.itertuples():
        if is_complete(feature_path(out_dir, row.slide_id)):
            summary.skipped.append(row.slide_id)
        else:
            mpp = getattr(row, "mpp", None)
            todo.append((row.slide_id, row.path, None if mpp is None or pd.isna(mpp) else float(mpp)))
    cluster = None if address else LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        with Client(address or cluster) as client:
            futures = [client.submit(extract_one_slide, slide_id, path, mpp, str(out_dir), config, key=f"extract-{slide_id}", pure=False) for slide_id, path, mpp in todo]
            for future in tqdm(as_completed(futures), total=len(futures), desc="extract (dask)", unit="slide", disable=not progress):
                try:
                    slide_id, error = future.result()
                except Exception as err:  # a worker died: the slide is charged, the rest go on
                    slide_id, error = future.key.removeprefix("extract-"), f"{type(err).__name__}: {err}"
                if error is None:
                    summary.written.append(slide_id)
                else:
                    summary.failed[slide_id] = error
    finally:
        if cluster is not None:
            cluster.close()
    failures = pd.DataFrame([{"slide_id": k, "reason": v} for k, v in summary.failed.items()], columns=["slide_id", "reason"])
    write_text_atomic(out_dir / "failures.csv", failures.to_csv(index=False))
    return summary


def extract_one_slide(slide_id: str, path: str, mpp: float | None, out_dir: str, config: ExtractConfig) -> tuple[str, str | None]:
    """Extract and write one slide (runs on a worker); returns (slide_id, error or None)."""
    try:
        encoder = _worker_encoder(config.encoder, config.encoder_weights)
        with open_slide(path, mpp=mpp, backend=config.reader_backend) as reader:
            data, mask, mask_ds = extract_slide(reader, slide_id, encoder, config)
        write_features(feature_path(out_dir, slide_id), data)
        _save_mask(Path(out_dir) / "masks" / f"{slide_id}.png", mask, mask_ds)
        return slide_id, None
    except Exception as err:
        return slide_id, f"{type(err).__name__}: {err}"


@lru_cache(maxsize=2)
def _worker_encoder(name: str, weights: str | None) -> Encoder:
    """One encoder per worker process, built on its first task (weights are loaded once)."""
    return create_encoder(name, weights=weights)
