"""One call sets a chapter up: `setup_chapter` gives every notebook the same look and hands it its
workspace, cohort, ground truth and pseudonyms, so no chapter repeats the set-up cells.

A chapter's first code cell after its parameters is then::

    chapter = setup_chapter(work_dir, output_dir, manifest)
    cohort, truth, names = chapter.cohort, chapter.truth, chapter.names
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from persam_lib.book.privacy import Pseudonyms
from persam_lib.book.workspace import Workspace
from persam_lib.cohort.manifest import Cohort, load_manifest
from persam_lib.cohort.truth import GroundTruth, load_truth
from persam_lib.plots.figures import use_book_style

QUIET_WARNINGS = (FutureWarning,)  # library deprecation notes: not for the book's readers
QUIET_MESSAGES = ("IProgress not found",)  # tqdm in a kernel without ipywidgets


def published_location(filename: str) -> str:
    """Where a warning came from, as a published page may show it: a library's file from its
    package down (``sklearn/metrics/_classification.py``), a file under the working folder
    relative to it, anything else by its name alone; never the machine's absolute path."""
    path = Path(filename)
    parts = path.parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            return "/".join(parts[parts.index(marker) + 1:])
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except (ValueError, OSError):
        return path.name


def format_warning_for_book(message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None) -> str:
    """`warnings.formatwarning` for a chapter: the usual one-line form, located by
    `published_location`, so a library's warning cannot put a machine path on a page."""
    return f"{published_location(filename)}:{lineno}: {category.__name__}: {message}\n"


@dataclass(frozen=True)
class Chapter:
    """What a chapter works with: where it reads and writes, and (for chapters about a cohort) the
    cohort, its ground truth (None when it ships none) and the pseudonyms the book shows."""

    ws: Workspace
    cohort: Cohort | None = None
    truth: GroundTruth | None = None
    names: Pseudonyms | None = None

    def record_label(self, slide_id: str, field: str | None = None) -> str:
        """``field=value`` of the sample's patient for ``field`` (default: the ground truth's
        deciding field); "" when there is no such field to name."""
        field = field or (self.truth.deciding_field if self.truth is not None else None)
        if self.cohort is None or not field:
            return ""
        patient = self.cohort.slides.set_index("slide_id").loc[slide_id, "patient_id"]
        return f"{field}={self.cohort.clinical.loc[patient, field]}"


def setup_chapter(
    work_dir: str | Path,
    output_dir: str | Path = "",
    manifest: str | Path = "",
    features_dir: str | Path = "",
    *,
    make_demo: Callable[[Workspace], Path] | None = None,
    with_cohort: bool = True,
    quiet: tuple[type[Warning], ...] = (),
) -> Chapter:
    """Set a chapter up from its ``work_dir``, ``output_dir`` and ``manifest`` parameters.

    Applies the book's look (seaborn theme, 3 significant digits in tables), hides warnings
    meant for developers (`QUIET_WARNINGS`, and ``quiet``) and prints the others without a machine
    path (`format_warning_for_book`). With ``with_cohort`` it loads the cohort
    of ``manifest``; when that is "" the demo cohort's: ``make_demo(workspace)`` makes it and
    returns its manifest (the chapters that generate a demo cohort), or else it is read from the
    work dir. ``features_dir`` names feature files the user brought (otherwise the work dir's).
    ``with_cohort=False`` is for chapters that only read other chapters' results.
    """
    for category in (*QUIET_WARNINGS, *quiet):
        warnings.filterwarnings("ignore", category=category)
    for message in QUIET_MESSAGES:
        warnings.filterwarnings("ignore", message=message)
    warnings.formatwarning = format_warning_for_book
    use_book_style()
    pd.set_option("display.float_format", lambda v: f"{v:.3g}")
    ws = Workspace.of(work_dir, output_dir, features_dir)
    if not with_cohort:
        return Chapter(ws)
    if str(manifest):
        path = ws.manifest(manifest)
    else:
        path = make_demo(ws) if make_demo is not None else ws.demo_manifest
    cohort = load_manifest(path)
    return Chapter(ws, cohort, load_truth(cohort), Pseudonyms.for_cohort(cohort))
