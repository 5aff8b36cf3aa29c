"""Bring features that other tools wrote (CLAM, TRIDENT) into a features directory.

CLAM writes ``<dir>/h5_files/<slide>.h5``; TRIDENT writes ``<dir>/features_<encoder>/<slide>.h5``
(or the user points at that folder). Both hold ``features`` [N, D] and ``coords`` [N, 2]. Files are
matched to the manifest's slides by slide_id or by the slide file's name, checked (datasets,
matching lengths, finite values, one feature dimension and one set of settings for the whole
cohort) and copied atomically into our layout. Each copy gets a settings record (source format,
encoder if known, patch size, mpp; see `persam_lib.features.settings`), so imported features pass
`~persam_lib.features.consistency.check_feature_folder` when they are consistent. The output
folder is locked while the import runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from persam_lib.cohort.manifest import Cohort
from persam_lib.features.settings import describe, imported_settings, recorded_settings, setting_differences
from persam_lib.features.store import feature_path, is_complete, read_features, write_features
from persam_lib.io.locks import output_lock
from persam_lib.io.paths import check_writable_folder

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
    """Copy matching feature files into ``out_dir``; every slide of ``cohort`` is accounted for.

    A file whose dimension or settings differ from the first one (or from the files already in
    ``out_dir``) fails its slide with a message naming both files and the setting.
    """
    files = find_feature_files(source, fmt)
    out_dir = Path(out_dir)
    check_writable_folder(out_dir)
    with output_lock(out_dir, "import-features"):
        return _import(cohort, files, out_dir, fmt, f"{fmt}:{Path(source).name}")


def _import(cohort: Cohort, files: dict[str, Path], out_dir: Path, fmt: str, encoder: str) -> ImportSummary:
    summary = ImportSummary()
    matched: set[str] = set()
    reference = None  # (file, dimension, settings) that every other slide must match
    rows = list(cohort.slides.itertuples())
    for row in rows:  # files imported earlier set the reference, so a later import cannot mix in others
        target = feature_path(out_dir, row.slide_id)
        if reference is None and is_complete(target):
            data = read_features(target, check_finite=False)
            reference = (target, data.features.shape[1], recorded_settings(data))
    for row in rows:
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
            data.slide_id = row.slide_id
            data.encoder = data.encoder if data.encoder != "unknown" else encoder
            if data.extraction is None:
                data.extraction = imported_settings(fmt, data)
            if reference is not None:
                _check_matches(files[stem], data.features.shape[1], data.extraction, reference)
            else:
                reference = (files[stem], data.features.shape[1], data.extraction)
            write_features(target, data)
            summary.imported.append(row.slide_id)
        except Exception as err:
            summary.failed[row.slide_id] = f"{type(err).__name__}: {err}"
    summary.unmatched = sorted(set(files) - matched)
    return summary


def _check_matches(path: Path, dim: int, settings: dict, reference: tuple[Path, int, dict]) -> None:
    ref_path, ref_dim, ref_settings = reference
    if dim != ref_dim:
        raise ValueError(f"{path}: features have dimension {dim}, but {ref_path} has {ref_dim}; all slides need the same encoder")
    differences = setting_differences(ref_settings, settings)
    if differences:
        raise ValueError(f"{path}: made with other settings than {ref_path} ({describe(differences, ref_path.name, path.name)}); all slides need features made the same way")
