"""Extraction with slides as tasks on a Dask distributed cluster.

`extract_distributed` submits one task per unfinished slide to an existing scheduler (``address``)
or to a `LocalCluster` of ``n_workers`` processes. Every task writes its slide's products itself
(mask first, feature file last, each atomically), so the guarantees are those of `extract`: the
folder is locked for the run, features already there must match this run's settings, finished
slides are skipped on rerun, a failed slide is recorded in ``failures.csv`` (until it succeeds)
and the others go on, and a disk-full / read-only fault stops the run with one error.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from tqdm import tqdm

from persam_lib.cohort.manifest import Cohort
from persam_lib.features.encoders import Encoder, create_encoder
from persam_lib.features.config import ExtractConfig
from persam_lib.features.extract import ExtractSummary, check_encoded, extract_slide, prepare_run
from persam_lib.features.products import MASKS, WriteStopped, stopping_errno, write_failures, write_slide_products
from persam_lib.features.settings import extraction_settings
from persam_lib.io.locks import output_lock
from persam_lib.io.paths import check_writable_folder
from persam_lib.slides.factory import open_slide


def extract_distributed(
    cohort: Cohort, out_dir: str | Path, config: ExtractConfig = ExtractConfig(), *, address: str | None = None, n_workers: int = 2, progress: bool = True, overwrite: bool = False
) -> ExtractSummary:
    """Extract every unfinished slide of ``cohort`` as a Dask task; returns what happened.

    Same folder rules as `~persam_lib.features.extract.extract`: locked for the run, settings
    checked against the features already there (``overwrite`` redoes every slide), and a
    `~persam_lib.features.products.WriteStopped` fault stops the run after ``failures.csv`` is written.
    """
    from dask.distributed import Client, LocalCluster, as_completed

    out_dir = Path(out_dir)
    check_writable_folder(out_dir)
    check_writable_folder(out_dir / MASKS)
    with output_lock(out_dir, "extract"):
        settings, todo, summary = prepare_run(cohort, out_dir, config, overwrite=overwrite)
        cluster = None if address else LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None)
        try:
            with Client(address or cluster) as client:
                futures = [client.submit(extract_one_slide, slide_id, path, mpp, str(out_dir), config, settings, key=f"extract-{slide_id}", pure=False) for slide_id, path, mpp in todo]
                for future in tqdm(as_completed(futures), total=len(futures), desc="extract (dask)", unit="slide", disable=not progress):
                    try:
                        slide_id, error = future.result()
                    except OSError as err:
                        slide_id, error = future.key.removeprefix("extract-"), f"{type(err).__name__}: {err}"
                        if stopping_errno(err) is not None:  # every later slide would fail too: stop
                            summary.failed[slide_id] = error
                            client.cancel(futures)
                            raise WriteStopped(err.errno, err.strerror, err.filename) from err
                    except Exception as err:  # a worker died: the slide is charged, the rest go on
                        slide_id, error = future.key.removeprefix("extract-"), f"{type(err).__name__}: {err}"
                    if error is None:
                        summary.written.append(slide_id)
                    else:
                        summary.failed[slide_id] = error
        except WriteStopped:
            try:
                write_failures(out_dir, summary.failed, summary.written + summary.skipped)
            except OSError:
                pass
            raise
        finally:
            if cluster is not None:
                cluster.close()
        write_failures(out_dir, summary.failed, summary.written + summary.skipped)
    return summary


def extract_one_slide(slide_id: str, path: str, mpp: float | None, out_dir: str, config: ExtractConfig, settings: dict | None = None) -> tuple[str, str | None]:
    """Extract and write one slide (runs on a worker); returns (slide_id, error or None).

    ``settings`` is the record written into the feature file (computed from ``config`` when
    None). A disk-full / read-only / permission fault is raised (`WriteStopped`), not returned,
    so the driver stops the run.
    """
    try:
        encoder = _worker_encoder(config.encoder, config.encoder_weights)
        with open_slide(path, mpp=mpp, backend=config.reader_backend) as reader:
            data, mask, mask_ds = extract_slide(reader, slide_id, encoder, config)
        data.extraction = settings if settings is not None else extraction_settings(config)
        check_encoded(data)
        write_slide_products(out_dir, data, mask, mask_ds)
        return slide_id, None
    except WriteStopped:
        raise
    except Exception as err:
        return slide_id, f"{type(err).__name__}: {err}"


@lru_cache(maxsize=2)
def _worker_encoder(name: str, weights: str | None) -> Encoder:
    """One encoder per worker process, built on its first task (weights are loaded once)."""
    return create_encoder(name, weights=weights)
