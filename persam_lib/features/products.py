"""A slide's products — its tissue mask PNG and its HDF5 feature file — are complete together or
not at all, and ``failures.csv`` keeps every failure until its slide succeeds.

The mask is written first and the feature file last, each atomically, so a slide is done exactly
when both exist under their final names (`slide_done`); a slide missing either is redone by the
next run. A fault that every later slide would hit too — disk full, a read-only or forbidden
folder — stops the run as `WriteStopped` (an OSError naming the file), instead of failing each
remaining slide in turn.
"""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, PngImagePlugin

from persam_lib.features.store import SlideFeatures, feature_path, is_complete, slide_file_name, write_features
from persam_lib.io.atomic import atomic_path, write_text_atomic

FAILURES = "failures.csv"
MASKS = "masks"
# write errors after which every later slide would fail the same way
STOPPING_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


class WriteStopped(OSError):
    """Writing a slide's products hit a fault that every later slide would hit too (disk full,
    read-only file system, permission denied). ``filename`` is the file being written."""


def mask_path(out_dir: str | Path, slide_id: str) -> Path:
    """Where the tissue mask of ``slide_id`` lives in a features folder (refused outside it)."""
    return Path(out_dir) / MASKS / slide_file_name(slide_id, ".png")


def save_mask(path: str | Path, mask: np.ndarray, downsample: float) -> Path:
    """Write a tissue mask as a PNG (255 = tissue) atomically, its downsample (level-0 px per mask px) in a text chunk."""
    info = PngImagePlugin.PngInfo()
    info.add_text("downsample", str(downsample))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray((np.asarray(mask) * 255).astype(np.uint8)).save(tmp, format="PNG", pnginfo=info)
    return Path(path)


def load_tissue_mask(features_dir: str | Path, slide_id: str) -> tuple[np.ndarray, float]:
    """The tissue mask saved beside the features, and its downsample (level-0 px per mask px)."""
    image = Image.open(mask_path(features_dir, slide_id))
    return np.asarray(image) > 0, float(image.info.get("downsample", 16.0))


def slide_done(out_dir: str | Path, slide_id: str) -> bool:
    """True when every product of the slide is in place: its mask, and a complete feature file."""
    return mask_path(out_dir, slide_id).is_file() and is_complete(feature_path(out_dir, slide_id))


def remove_slide_products(out_dir: str | Path, slide_id: str) -> None:
    """Delete a slide's products (feature file first, so it is never 'done' with a stale mask)."""
    feature_path(out_dir, slide_id).unlink(missing_ok=True)
    mask_path(out_dir, slide_id).unlink(missing_ok=True)


def write_slide_products(out_dir: str | Path, data: SlideFeatures, mask: np.ndarray, mask_downsample: float) -> None:
    """Write the slide's mask, then its feature file; on failure neither is left behind.

    A disk-full, read-only or permission error is raised as `WriteStopped` naming the file; any
    other error propagates as it is (the slide fails, the run goes on).
    """
    targets = [(mask_path(out_dir, data.slide_id), lambda path: save_mask(path, mask, mask_downsample)), (feature_path(out_dir, data.slide_id), lambda path: write_features(path, data))]
    for path, write in targets:
        try:
            write(path)
        except BaseException as err:
            _forget(out_dir, data.slide_id)
            code = stopping_errno(err)
            if code is not None:
                raise WriteStopped(code, os.strerror(code), str(path)) from err
            raise


def _forget(out_dir: str | Path, slide_id: str) -> None:
    try:
        remove_slide_products(out_dir, slide_id)
    except OSError:  # a read-only folder refuses this too; nothing under a final name was half-written
        pass


def stopping_errno(err: BaseException) -> int | None:
    """The errno of a write error that would stop every later slide too (None for any other error).

    h5py reports HDF5's errno inside its message (``errno = 28``) as well as in ``errno``.
    """
    if not isinstance(err, OSError):
        return None
    code = err.errno
    if code is None:
        match = re.search(r"errno = (\d+)", str(err))
        code = int(match.group(1)) if match else None
    return code if code in STOPPING_ERRNOS else None


def write_failures(out_dir: str | Path, failed: dict[str, str], succeeded: set[str] | list[str]) -> Path:
    """Write ``failures.csv``, merged with the previous one: a failure is kept until its slide
    succeeds (``succeeded``: slides written or found complete by this run), this run's failures
    replace older reasons, and entries for slides this run did not touch stay."""
    path = Path(out_dir) / FAILURES
    previous = read_failures(out_dir)
    succeeded = set(succeeded)
    merged = {sid: reason for sid, reason in previous.items() if sid not in succeeded and sid not in failed}
    merged.update(failed)
    table = pd.DataFrame([{"slide_id": k, "reason": v} for k, v in merged.items()], columns=["slide_id", "reason"])
    return write_text_atomic(path, table.to_csv(index=False))


def read_failures(out_dir: str | Path) -> dict[str, str]:
    """The failures a previous run recorded (empty when there is no readable ``failures.csv``)."""
    path = Path(out_dir) / FAILURES
    if not path.is_file():
        return {}
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError):
        return {}  # unreadable: this run's failures replace it
    if "slide_id" not in table or "reason" not in table:
        return {}
    return dict(zip(table["slide_id"], table["reason"]))
