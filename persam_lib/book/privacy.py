"""The privacy guard: pseudonyms for what the book shows, and a scan of the built book for leaks.

The book shows patients and slides under pseudonyms (``P0001``, ``S0001``; a cohort whose ids
already look like that keeps them) and never shows a field marked ``identifying: true``. After
the build, `scan_for_leaks` reads every text file of ``_build/html`` (pages, search index, copied
notebook sources) and reports any real patient or slide id that differs from its pseudonym and
any value of an identifying field; `persam book` then fails.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from persam_lib.cohort.manifest import Cohort

TEXT_SUFFIXES = {".html", ".js", ".json", ".txt", ".ipynb", ".md", ".csv", ".xml"}
MIN_SCANNED_LENGTH = 4  # shorter strings ("12") match ordinary numbers and words: reported as not scannable


def _assign(ids: list[str], prefix: str) -> dict[str, str]:
    """Identity when every id already is a pseudonym of this prefix (the demo cohort), else
    ``<prefix>0001``… in sorted id order."""
    if all(re.fullmatch(rf"{prefix}\d{{4,}}", i) for i in ids):
        return {i: i for i in ids}
    width = max(4, len(str(len(ids))))
    return {i: f"{prefix}{n:0{width}d}" for n, i in enumerate(sorted(ids), start=1)}


@dataclass(frozen=True)
class Pseudonyms:
    """The names the book uses for a cohort's patients and slides (or images: I0001, …)."""

    patients: dict[str, str]
    slides: dict[str, str]

    @classmethod
    def for_cohort(cls, cohort: Cohort) -> "Pseudonyms":
        sample_prefix = "I" if cohort.modality == "images" else "S"
        return cls(_assign(sorted(map(str, cohort.clinical.index)), "P"), _assign(sorted(map(str, cohort.slides["slide_id"])), sample_prefix))

    def patient(self, patient_id: str) -> str:
        return self.patients[str(patient_id)]

    def slide(self, slide_id: str) -> str:
        return self.slides[str(slide_id)]

    def table(self, table: pd.DataFrame) -> pd.DataFrame:
        """A copy with patient and slide ids (columns, or the index when it is named so) replaced by pseudonyms."""
        out = table.copy()
        for column, mapping in (("patient_id", self.patients), ("slide_id", self.slides)):
            if column in out.columns:
                out[column] = out[column].astype(str).map(mapping)
            if out.index.name == column:
                out.index = out.index.astype(str).map(mapping).rename(column)
        return out


@dataclass(frozen=True)
class Leak:
    """A string that must not be in the book, where it was found."""

    file: Path
    kind: str  # "patient id", "slide id", or "identifying field '<name>'"
    value: str

    def __str__(self) -> str:
        return f"{self.file}: {self.kind} {self.value!r}"


def sensitive_strings(cohort: Cohort) -> tuple[dict[str, str], list[str]]:
    """What the scan looks for (string → what it is) and the strings too short to scan reliably."""
    names = Pseudonyms.for_cohort(cohort)
    found: dict[str, str] = {}
    for raw, alias in names.patients.items():
        if raw != alias:
            found[raw] = "patient id"
    for raw, alias in names.slides.items():
        if raw != alias:
            found[raw] = "slide id"
    if cohort.identifying is not None:
        for column in cohort.identifying.columns:
            for value in cohort.identifying[column].dropna().astype(str):
                if value.strip():
                    found[value.strip()] = f"identifying field '{column}'"
    short = sorted(s for s in found if len(s) < MIN_SCANNED_LENGTH)
    return {s: k for s, k in found.items() if len(s) >= MIN_SCANNED_LENGTH}, short


def scan_for_leaks(html_dir: str | Path, cohort: Cohort) -> tuple[list[Leak], list[str]]:
    """Every occurrence, as a whole token, of a real id or identifying value in the built book's text
    files; and the strings that were too short to scan."""
    targets, short = sensitive_strings(cohort)
    leaks: list[Leak] = []
    if not targets:
        return leaks, short
    alternatives = "|".join(re.escape(s) for s in sorted(targets, key=len, reverse=True))
    pattern = re.compile(rf"(?<![A-Za-z0-9_-])({alternatives})(?![A-Za-z0-9_])")
    for path in sorted(Path(html_dir).rglob("*")):
        if not path.is_file() or path.suffix.lower() not in TEXT_SUFFIXES:
            continue
        text = path.read_text(errors="ignore")
        for value in dict.fromkeys(m.group(1) for m in pattern.finditer(text)):
            leaks.append(Leak(path, targets[value], value))
    return leaks, short


def scan_for_paths(html_dir: str | Path, folders: list[Path]) -> list[Leak]:
    """Every text file of the built book that shows one of ``folders`` as an absolute path (the
    machine's layout: project, work folder, a cohort's folder); one finding per file and folder."""
    targets = sorted({str(Path(f)) for f in folders if len(str(f)) > 1}, key=len, reverse=True)
    leaks: list[Leak] = []
    for path in sorted(Path(html_dir).rglob("*")):
        if not path.is_file() or path.suffix.lower() not in TEXT_SUFFIXES:
            continue
        text = path.read_text(errors="ignore")
        for folder in targets:
            if folder in text:
                leaks.append(Leak(path, "machine path", folder))
                break
    return leaks
