"""Bring features that other tools wrote (CLAM, TRIDENT) into a features directory.

CLAM writes ``<dir>/h5_files/<slide>.h5``; TRIDENT writes ``<dir>/features_<encoder>/<slide>.h5``
(or the user points at that folder). Both hold ``features`` [N, D] and ``coords`` [N, 2]. Files are
matched to the manifest's slides by slide_id or by the slide file's name, checked (datasets,
matching lengths, one feature dimension for the whole cohort) and copied atomically into our layout.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from persam_lib.cohort.manifest import Cohort
from persam_lib.features.store import feature_path, is_complete, read_features, write_features

FORMATS = ("clam", "trident")


@dataclass
class ImportSummary:
    imported: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # manifest slides with no file
    unmatched: list[str] = field(default_factory=list)  # files that match no slide
    failed: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        text = f"import-features: {len(self.imported)} imported, {len(self.skipped)} already there, {len(self.missing)} slide(s) without features, {len(self.unmatched)} file(s) matching no slide, {len(self.failed)} failed"
        if self.missing:
            text += f"; missing: {', '.join(self.missing[:5])}{' ...' if len(self.missing) > 5 else ''}"
        return text


def find_feature_files(source: str | Path, fmt: str) -> dict[str, Path]:
    """Feature files under ``source`` in a tool's layout, by file stem."""
    source = Path(source)
    if fmt not in FORMATS:
        raise ValueError(f"Unknown format '{fmt}'. Supported formats: {', '.join(FORMATS)}.")
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: not a directory of feature files")
    if fmt == "clam":
        folders = [source / "h5_files"] if (source / "h5_files").is_dir() else [source]
    else:
        folders = sorted(p for p in source.glob("features_*") if p.is_dir()) or [source]
        if len(folders) > 1:
            names = ", ".join(p.name for p in folders)
            raise ValueError(f"{source} holds features of several encoders ({names}); point at one features_<encoder> folder.")
    files = {p.stem: p for folder in folders for p in sorted(folder.glob("*.h5"))}
    if not files:
        raise FileNotFoundError(f"{source}: no .h5 feature files found in the {fmt} layout ({', '.join(str(f) for f in folders)})")
    return files


def import_features(cohort: Cohort, source: str | Path, out_dir: str | Path, fmt: str) -> ImportSummary:
    """Copy matching feature files into ``out_dir``; every slide of ``cohort`` is accounted for."""
    files = find_feature_files(source, fmt)
    encoder = f"{fmt}:{Path(source).name}"
    summary = ImportSummary()
    matched: set[str] = set()
    dims: dict[int, str] = {}
    for row in cohort.slides.itertuples():
        stem = next((s for s in (row.slide_id, Path(row.path).stem) if s in files), None)
        if stem is None:
            summary.missing.append(row.slide_id)
            continue
        matched.add(stem)
        target = feature_path(out_dir, row.slide_id)
        if is_complete(target):
            summary.skipped.append(row.slide_id)
            continue
        try:
            data = read_features(files[stem])
            if len(data.features) == 0:
                raise ValueError(f"{files[stem]}: holds no patches")
            if dims and data.features.shape[1] not in dims:
                raise ValueError(f"{files[stem]}: features have dimension {data.features.shape[1]}, but slide '{next(iter(dims.values()))}' has {next(iter(dims))}; all slides need the same encoder")
            dims.setdefault(data.features.shape[1], row.slide_id)
            data.slide_id = row.slide_id
            data.encoder = data.encoder if data.encoder != "unknown" else encoder
            write_features(target, data)
            summary.imported.append(row.slide_id)
        except Exception as err:
            summary.failed[row.slide_id] = f"{type(err).__name__}: {err}"
    summary.unmatched = sorted(set(files) - matched)
    return summary
