"""Extraction runner: slide → tissue mask → patch grid → encoder → one HDF5 file per slide.

Patches are read by a PyTorch DataLoader whose worker processes decode pixels while the main
process encodes the previous batch, and a background thread plans the next slides (tissue mask,
patch grid) meanwhile (`planned_chunks`). Resumable (a slide whose products — tissue mask and feature
file — are both in place is skipped) and fault-tolerant (a slide that fails — unreadable, no
tissue, a corrupt tile — is recorded in ``failures.csv`` with the reason while the others go
on; the record is kept until the slide succeeds). Each product is written to a temporary file
and renamed when complete, the mask first and the feature file last, so a crash never leaves a
half-written cache. The output folder is locked for the run, features already there must have
been made with the same settings (see `persam_lib.features.settings`), and a fault that would
fail every later slide too (disk full, read-only folder, a reader killed for memory) stops the
run with one clear error, keeping what was finished.
"""
from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from persam_lib.cohort.manifest import Cohort
from persam_lib.features.config import ExtractConfig
from persam_lib.features.consistency import check_rerun
from persam_lib.features.encoders import Encoder, create_encoder
from persam_lib.features.products import MASKS, WriteStopped, remove_slide_products, slide_done, write_failures, write_slide_products
from persam_lib.features.settings import extraction_settings
from persam_lib.features.store import SlideFeatures
from persam_lib.features.workers import ReaderKilledError, is_worker_killed, killed_error, reader_worker_init
from persam_lib.io.atomic import remove_stale_temps, write_json_atomic
from persam_lib.io.locks import output_lock
from persam_lib.io.paths import check_writable_folder
from persam_lib.slides.base import SlideReader
from persam_lib.slides.factory import open_slide
from persam_lib.slides.patching import PatchConfig, PatchPlan, patch_grid, plan_patches
from persam_lib.slides.tissue import TissueConfig, segmentation_image, tissue_mask


@dataclass
class ExtractSummary:
    """What an extraction run did."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        text = f"extract: {len(self.written)} written, {len(self.skipped)} already done, {len(self.failed)} failed"
        if self.failed:
            text += f" ({', '.join(sorted(self.failed))}; reasons in failures.csv)"
        return text


class NoTissueError(RuntimeError):
    """The tissue mask of a slide is empty, so there is nothing to encode."""


@dataclass
class SlidePlan:
    """Everything needed to read one slide's patches, decided before any patch is read."""

    slide_id: str
    path: str
    mpp_override: float | None
    coords: np.ndarray  # (N, 2) level-0 top-left
    plan: PatchPlan
    mask: np.ndarray
    mask_downsample: float


def plan_slide(reader: SlideReader, slide_id: str, config: ExtractConfig = ExtractConfig(), mpp_override: float | None = None) -> SlidePlan:
    """Tissue mask on the segmentation image, the pyramid level to read, and the patch grid.

    The segmentation image is the slide at ``config.thumbnail_downsample`` (read from the stored
    level nearest it and box-averaged the rest of the way), so a slide stored as one level is
    segmented as fast as a pyramid; the mask's morphology is in µm, from the slide's mpp.
    """
    thumb, thumb_ds = segmentation_image(*reader.thumbnail(config.thumbnail_downsample), config.thumbnail_downsample)
    mask = tissue_mask(thumb, reader.mpp * thumb_ds, config.tissue)
    plan = plan_patches(reader.mpp, reader.level_downsamples, config.patch)
    coords = patch_grid(mask, thumb_ds, reader.level_dimensions[0], plan.patch_size_level0, plan.stride_level0, config.patch.min_tissue_fraction)
    if len(coords) == 0:
        raise NoTissueError(
            f"{reader.path}: no patch has at least {config.patch.min_tissue_fraction:.0%} tissue (the tissue mask covers {mask.mean():.1%} "
            "of the thumbnail). Check that the slide holds tissue, or lower the minimum tissue fraction."
        )
    return SlidePlan(slide_id, str(reader.path), mpp_override, coords, plan, mask, thumb_ds)


def read_patch(reader: SlideReader, level0_xy: tuple[int, int], plan: PatchPlan) -> np.ndarray:
    """One patch at the plan's target resolution: read at the plan's level, resized when needed."""
    pixels = reader.read_region(level0_xy, plan.level, (plan.read_size, plan.read_size))
    if plan.read_size != plan.patch_size:
        pixels = np.asarray(Image.fromarray(pixels).resize((plan.patch_size, plan.patch_size), Image.BILINEAR))
    return pixels


def extract_slide(reader: SlideReader, slide_id: str, encoder: Encoder, config: ExtractConfig = ExtractConfig()) -> tuple[SlideFeatures, np.ndarray, float]:
    """Features of one slide read in this process, its tissue mask and the mask's downsample."""
    plan = plan_slide(reader, slide_id, config)
    chunks = []
    for start in range(0, len(plan.coords), config.batch_size):
        batch = np.stack([read_patch(reader, (int(x), int(y)), plan.plan) for x, y in plan.coords[start : start + config.batch_size]])
        chunks.append(encoder(batch))
    return _slide_features(plan, np.concatenate(chunks), encoder.name), plan.mask, plan.mask_downsample


class PatchDataset(Dataset):
    """Every patch of every planned slide, in slide order; each worker opens its own readers.

    A patch that cannot be read comes back as an error message instead of raising, so the
    failure is charged to its slide and the other slides go on.
    """

    def __init__(self, plans: list[SlidePlan], backend: str = "auto"):
        self.plans = plans
        self.backend = backend
        self.index = np.concatenate([np.stack([np.full(len(p.coords), i), np.arange(len(p.coords))], 1) for i, p in enumerate(plans)]) if plans else np.zeros((0, 2), int)
        self._readers: dict[int, SlideReader] = {}

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str | None]:
        slide, patch = (int(v) for v in self.index[i])
        plan = self.plans[slide]
        try:
            reader = self._readers.get(slide)
            if reader is None:
                for old in self._readers.values():  # slides are read in order: keep one open
                    old.close()
                self._readers = {slide: open_slide(plan.path, mpp=plan.mpp_override, backend=self.backend)}
                reader = self._readers[slide]
            x, y = plan.coords[patch]
            return slide, read_patch(reader, (int(x), int(y)), plan.plan), None
        except Exception as err:  # a corrupt tile must only fail its own slide
            return slide, None, f"{type(err).__name__}: {err}"


def _collate(items: list[tuple[int, np.ndarray | None, str | None]]) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    shape = next((p.shape for _, p, _ in items if p is not None), (1, 1, 3))
    pixels = np.stack([p if p is not None else np.zeros(shape, np.uint8) for _, p, _ in items])
    return np.array([s for s, _, _ in items]), pixels, [e for _, _, e in items]


def extract(cohort: Cohort, out_dir: str | Path, config: ExtractConfig = ExtractConfig(), *, progress: bool = True, overwrite: bool = False) -> ExtractSummary:
    """Extract features for every slide of ``cohort`` into ``out_dir``; skip slides already done.

    The folder is locked for the whole run: a second extraction into it stops at once with
    `~persam_lib.io.locks.FolderBusyError`. Features already there must have been made with the
    same settings (`~persam_lib.features.consistency.FeatureMismatchError` otherwise) unless
    ``overwrite``, which redoes every slide. A disk-full, read-only or permission fault while
    writing stops the run as `~persam_lib.features.products.WriteStopped` (an OSError naming the
    file), a killed reader worker as `~persam_lib.features.workers.ReaderKilledError`; both after
    ``failures.csv`` is written, keeping every slide finished before.
    """
    out_dir = Path(out_dir)
    check_writable_folder(out_dir)
    check_writable_folder(out_dir / MASKS)
    with output_lock(out_dir, "extract"):
        encoder = create_encoder(config.encoder, weights=config.encoder_weights)
        settings, todo, summary = prepare_run(cohort, out_dir, config, overwrite=overwrite)
        bar = tqdm(total=len(todo), desc="extract", unit="slide", disable=not progress)
        try:
            fork_guard = threading.Lock()
            for chunk in planned_chunks(todo, config, summary, fork_guard):  # slide k+1 is planned while slide k streams
                _encode_and_write(chunk, encoder, config, settings, out_dir, summary, progress, bar, fork_guard)
            bar.update(len(todo) - bar.n)  # the slides that failed before streaming
        except (WriteStopped, ReaderKilledError):
            _write_failures_if_possible(out_dir, summary)
            raise
        finally:
            bar.close()
        write_failures(out_dir, summary.failed, summary.written + summary.skipped)
    return summary


def prepare_run(cohort: Cohort, out_dir: Path, config: ExtractConfig, *, overwrite: bool = False) -> tuple[dict, list[tuple[str, str, float | None]], ExtractSummary]:
    """What every extraction (local or Dask) does first, holding the folder's lock: remove temporary
    files whose writer is gone, check the settings of the features already there (with
    ``overwrite``, delete those made differently), record the settings in ``extract_config.json``,
    and list the slides to do as (slide_id, path, mpp override); slides done are counted as skipped."""
    remove_stale_temps(out_dir)
    remove_stale_temps(out_dir / MASKS)
    settings = extraction_settings(config)
    for slide_id in check_rerun(out_dir, list(cohort.slides["slide_id"]), settings, overwrite=overwrite):
        remove_slide_products(out_dir, slide_id)  # made with other settings: redone below, never mixed in
    write_json_atomic(out_dir / "extract_config.json", {**asdict(config), "extraction": settings})
    summary = ExtractSummary()
    todo = []
    for row in cohort.slides.itertuples():
        if not overwrite and slide_done(out_dir, row.slide_id):
            summary.skipped.append(row.slide_id)
            continue
        mpp = getattr(row, "mpp", None)
        todo.append((row.slide_id, row.path, None if mpp is None or pd.isna(mpp) else float(mpp)))
    return settings, todo, summary


def _plan_one(slide_id: str, path: str, mpp: float | None, config: ExtractConfig) -> SlidePlan:
    with open_slide(path, mpp=mpp, backend=config.reader_backend) as reader:
        return plan_slide(reader, slide_id, config, mpp)


def planned_chunks(todo: list[tuple[str, str, float | None]], config: ExtractConfig, summary: ExtractSummary, fork_guard: threading.Lock | None = None) -> Iterator[list[SlidePlan]]:
    """The slides' plans (tissue mask and patch grid), in slide order, made by one background
    thread while the caller streams the plans it already has: each chunk is every plan finished
    by the time the caller asks for more (one at least), so planning overlaps reading and encoding
    instead of running serially before them. A slide whose planning fails is recorded in
    ``summary.failed`` and the others go on. Each plan holds ``fork_guard`` while it runs: the
    caller takes it to start reader processes, so no process is forked while the planner thread is
    inside a slide library (a lock it held would be held forever in the child)."""
    guard = fork_guard or threading.Lock()

    def guarded(slide_id: str, path: str, mpp: float | None) -> SlidePlan:
        with guard:
            return _plan_one(slide_id, path, mpp, config)

    planner = ThreadPoolExecutor(1, thread_name_prefix="persam-plan")
    try:
        pending = deque((slide_id, planner.submit(guarded, slide_id, path, mpp)) for slide_id, path, mpp in todo)
        while pending:
            chunk: list[SlidePlan] = []
            while pending and (not chunk or pending[0][1].done()):
                slide_id, future = pending.popleft()
                try:
                    chunk.append(future.result())
                except Exception as err:  # one failed slide must not stop the others
                    summary.failed[slide_id] = f"{type(err).__name__}: {err}"
            if chunk:
                yield chunk
    finally:
        planner.shutdown(wait=True, cancel_futures=True)  # a stopped run plans no further slide


def _encode_and_write(plans: list[SlidePlan], encoder: Encoder, config: ExtractConfig, settings: dict, out_dir: Path, summary: ExtractSummary, progress: bool, bar: tqdm,
                      fork_guard: threading.Lock) -> None:
    """Read every planned patch (in reader workers), encode batch by batch, write each slide when its last patch is in."""
    workers = config.workers() if len(plans) else 0
    loader = DataLoader(PatchDataset(plans, config.reader_backend), batch_size=config.batch_size, num_workers=workers, collate_fn=_collate, worker_init_fn=reader_worker_init() if workers else None)
    remaining = {i: len(p.coords) for i, p in enumerate(plans)}
    chunks: dict[int, list[np.ndarray]] = {i: [] for i in remaining}
    errors: dict[int, str] = {}
    slide_bar = tqdm(total=len(plans[0].coords) if plans else 0, desc=plans[0].slide_id if plans else "", unit="patch", position=1, leave=False, disable=not progress)
    with fork_guard:  # the reader processes start here: not while a slide is being planned
        batches = iter(loader)
    try:
        for slide_idx, pixels, batch_errors in batches:
            ok = np.array([e is None for e in batch_errors])
            features = encoder(pixels[ok]) if ok.any() else np.zeros((0, 0), np.float32)
            for s, e in zip(slide_idx[~ok], (e for e in batch_errors if e is not None)):
                errors.setdefault(int(s), e)
            for s in np.unique(slide_idx):
                s = int(s)
                chunks[s].append(features[slide_idx[ok] == s])
                remaining[s] -= int((slide_idx == s).sum())
                slide_bar.update(int((slide_idx == s).sum()))
                if remaining[s] == 0:
                    _finish_slide(plans[s], chunks.pop(s), errors.get(s), encoder.name, settings, out_dir, summary)
                    bar.update()
                    if s + 1 < len(plans):  # the per-slide bar moves on to the next slide
                        slide_bar.reset(total=len(plans[s + 1].coords))
                        slide_bar.set_description(plans[s + 1].slide_id)
    except RuntimeError as err:
        if is_worker_killed(err):
            raise killed_error(err) from err
        raise
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:  # the other readers stop now, not when the iterator is collected
            shutdown()
        slide_bar.close()


def _write_failures_if_possible(out_dir: Path, summary: ExtractSummary) -> None:
    try:
        write_failures(out_dir, summary.failed, summary.written + summary.skipped)
    except OSError:  # the same fault (a full disk) may refuse this too; the run's error says why
        pass


def _finish_slide(plan: SlidePlan, chunks: list[np.ndarray], error: str | None, encoder_name: str, settings: dict, out_dir: Path, summary: ExtractSummary) -> None:
    if error is not None:
        summary.failed[plan.slide_id] = error
        return
    try:
        data = _slide_features(plan, np.concatenate(chunks), encoder_name, settings)
        check_encoded(data)
        write_slide_products(out_dir, data, plan.mask, plan.mask_downsample)
        summary.written.append(plan.slide_id)
    except WriteStopped as err:  # every later slide would fail the same way: stop the run
        summary.failed[plan.slide_id] = f"{type(err).__name__}: {err}"
        raise
    except Exception as err:
        summary.failed[plan.slide_id] = f"{type(err).__name__}: {err}"


def check_encoded(data: SlideFeatures) -> None:
    """Refuse to write features with a NaN or infinite value (a ValueError naming the patch), so no
    feature file ever holds one: the slide fails and the rest go on."""
    bad = np.flatnonzero(~np.isfinite(data.features).all(axis=1))
    if len(bad):
        x, y = (int(v) for v in data.coords[bad[0]])
        raise ValueError(
            f"encoder '{data.encoder}' gave non-finite features for {len(bad)} of {len(data.features)} patch(es) of slide '{data.slide_id}', "
            f"first row {int(bad[0])} (patch at level-0 x={x}, y={y}); the slide is not written. Check the encoder and its weights."
        )


def _slide_features(plan: SlidePlan, features: np.ndarray, encoder_name: str, settings: dict | None = None) -> SlideFeatures:
    p = plan.plan
    return SlideFeatures(
        slide_id=plan.slide_id, features=features.astype(np.float32), coords=plan.coords, patch_size=p.patch_size, patch_level=p.level,
        downsample=p.level_downsample, mpp=p.mpp, encoder=encoder_name, patch_size_level0=p.patch_size_level0, extraction=settings,
    )
