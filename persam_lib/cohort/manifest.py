"""Read a cohort manifest (YAML) and validate it into a `Cohort`.

A manifest names a sample table — ``slides:`` (whole-slide images) or ``images:`` (2-D images:
PNG, TIFF or DICOM) — a clinical table, the label and the clinical fields.
Every problem found is reported with the file, the line of the CSV, the field, what is wrong
and what to do, and *all* problems are collected before raising, so a user fixes a table
in one pass rather than one error at a time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from persam_lib.cohort.schema import FieldSchema, FieldSpec, LabelSpec

REQUIRED_KEYS = ("cohort", "clinical", "label", "fields")
SAMPLE_KEYS = ("slides", "images")  # exactly one: the modality of the cohort
OPTIONAL_KEYS = ("truth", "window")
SLIDE_COLUMNS = ("slide_id", "patient_id", "path")
IMAGE_COLUMNS = ("image_id", "patient_id", "path")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest or its tables."""

    path: Path
    problem: str
    hint: str
    line: int | None = None  # 1-based line of the file (CSV header is line 1)
    field: str | None = None

    def __str__(self) -> str:
        where = str(self.path)
        if self.line is not None:
            where += f", line {self.line}"
        if self.field is not None:
            where += f", field '{self.field}'"
        return f"{where}: {self.problem}. {self.hint}"


class ManifestError(ValueError):
    """Raised when a manifest or one of its tables is invalid; lists every problem found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        head = f"{len(problems)} problem(s) in the cohort manifest:" if len(problems) > 1 else ""
        body = "\n".join(f"  - {p}" for p in problems) if head else str(problems[0])
        super().__init__(f"{head}\n{body}" if head else body)


@dataclass
class Cohort:
    """A validated cohort: slides, clinical records, schema and (optionally) ground truth.

    ``modality`` is "slides" or "images". `slides` is the table of samples, one row per slide or
    image, with columns slide_id, patient_id, path (absolute) and optional mpp; for an image cohort
    slide_id holds the image_id (every tool keys samples by that one column) and the columns
    window_center and window_width hold each image's display window (NaN: the file's own, or the
    manifest's ``window``);
    `clinical` is indexed by patient_id with one column per field plus the label column. Fields
    marked ``identifying: true`` are neither in the schema nor in `clinical` — no model reads them
    and no table shows them — but in `identifying`, so the book's privacy scan knows their values.
    """

    name: str
    manifest_path: Path
    slides: pd.DataFrame
    clinical: pd.DataFrame
    schema: FieldSchema
    truth_path: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    identifying: pd.DataFrame | None = field(default=None, repr=False)  # fields marked identifying: true, by patient_id
    modality: str = "slides"

    @property
    def input_kind(self) -> str:
        """What a model reads from this cohort (`ModelConfig.input_kind`): "features" for slides, "image" for images."""
        return "image" if self.modality == "images" else "features"

    @property
    def sample_name(self) -> str:
        """What one sample is called in messages and tables shown to people: "slide" or "image"."""
        return "image" if self.modality == "images" else "slide"

    @property
    def root(self) -> Path:
        return self.manifest_path.parent

    def records(self) -> pd.DataFrame:
        """Clinical fields only (no label), one row per patient."""
        return self.clinical[self.schema.names]

    def labels(self) -> pd.Series:
        """Label index (0..n_classes-1) per patient."""
        classes = list(self.schema.label.classes)
        return self.clinical[self.schema.label.column].map(classes.index).astype(int)

    def slide_table(self) -> pd.DataFrame:
        """Slides joined with their patient's label index; one row per slide."""
        labels = self.labels().rename("y")
        return self.slides.join(labels, on="patient_id")

    def sample_rows(self) -> dict[str, dict]:
        """Every row of `slide_table` as a dict, by slide_id (tools that read samples one at a time
        build this once and look them up in it)."""
        return {row["slide_id"]: row for row in self.slide_table().to_dict("records")}


def load_manifest(path: str | Path, *, check_files: bool = True) -> Cohort:
    """Load and validate a manifest; raise `ManifestError` listing every problem found."""
    cohort, problems = _read(Path(path), check_files=check_files)
    if problems:
        raise ManifestError(problems)
    assert cohort is not None
    return cohort


def validate_manifest(path: str | Path) -> list[Problem]:
    """Every problem with a manifest and its tables (an empty list means it is valid)."""
    return _read(Path(path), check_files=True)[1]


def _read(path: Path, *, check_files: bool) -> tuple[Cohort | None, list[Problem]]:
    path = path.resolve()
    if not path.is_file():
        return None, [Problem(path, "the manifest file does not exist", "Check the path you gave.")]
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        return None, [Problem(path, f"is not valid YAML ({err})", "Fix the YAML syntax.")]
    if not isinstance(raw, dict):
        return None, [Problem(path, "must be a YAML mapping", f"Give the keys {list(REQUIRED_KEYS)}.")]

    problems: list[Problem] = []
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    unknown = [k for k in raw if k not in REQUIRED_KEYS + SAMPLE_KEYS + OPTIONAL_KEYS]
    for key in missing:
        problems.append(Problem(path, f"the required key '{key}' is missing", _KEY_HINTS[key], field=key))
    samples_keys = [k for k in SAMPLE_KEYS if k in raw]
    if len(samples_keys) != 1:
        problems.append(Problem(path, "needs exactly one of the keys 'slides' and 'images'" + (" (both are given)" if samples_keys else ""), f"{_KEY_HINTS['slides']} Or, for 2-D images, {_KEY_HINTS['images'][0].lower()}{_KEY_HINTS['images'][1:]}", field="slides"))
    for key in unknown:
        allowed = list(REQUIRED_KEYS + SAMPLE_KEYS + OPTIONAL_KEYS)
        problems.append(Problem(path, f"unknown key '{key}'", f"Allowed keys are {allowed}; remove or rename it.", field=key))
    if missing or len(samples_keys) != 1:
        return None, problems
    modality = samples_keys[0]

    schema, schema_problems = _parse_schema(path, raw)
    problems += schema_problems
    problems += _check_window(path, raw.get("window"))
    if modality == "slides" and raw.get("window") is not None:
        problems.append(Problem(path, "'window' applies to 2-D images only", "Remove it, or use `images:` for a cohort of 2-D images.", field="window"))
    slides, slide_problems = _read_samples(path.parent / str(raw[modality]), modality[:-1], check_files)
    problems += slide_problems
    clinical = None
    if schema is not None:
        clinical, clinical_problems = _read_clinical(path.parent / str(raw["clinical"]), schema)
        problems += clinical_problems
    if slides is not None and clinical is not None:
        slides_csv = path.parent / str(raw[modality])
        for i, row in slides.iterrows():
            if row["patient_id"] not in clinical.index:
                problems.append(
                    Problem(slides_csv, f"patient '{row['patient_id']}' is not in the clinical table", f"Add the patient to the clinical CSV or remove the {modality[:-1]}.", line=int(i) + 2, field="patient_id")
                )
    truth_path = None
    if raw.get("truth"):
        truth_path = path.parent / str(raw["truth"])
        if not truth_path.is_file():
            problems.append(Problem(path, f"the truth file {truth_path} does not exist", "Fix the 'truth' path or remove the key.", field="truth"))
    if problems or schema is None or slides is None or clinical is None:
        return None, problems
    hidden = [f.name for f in schema.fields if f.identifying]
    model_schema = FieldSchema(fields=tuple(f for f in schema.fields if not f.identifying), label=schema.label)
    cohort = Cohort(
        name=str(raw["cohort"]), manifest_path=path, slides=slides, clinical=clinical.drop(columns=hidden),
        schema=model_schema, truth_path=truth_path, raw=raw, identifying=clinical[hidden], modality=modality,
    )
    return cohort, []


_KEY_HINTS = {
    "cohort": "Add `cohort: <name>`.",
    "slides": "Add `slides: slides.csv` (columns slide_id, patient_id, path).",
    "images": "Add `images: images.csv` (columns image_id, patient_id, path; optional window_center, window_width).",
    "clinical": "Add `clinical: clinical.csv` (patient_id, one column per field, the label column).",
    "label": "Add `label: {column: subtype, classes: [A, B]}`.",
    "fields": "Add `fields:` with one entry per clinical field, e.g. `age: {type: numeric, min: 0, max: 120}`.",
}


def _parse_schema(path: Path, raw: dict[str, Any]) -> tuple[FieldSchema | None, list[Problem]]:
    problems: list[Problem] = []
    label_raw = raw["label"]
    if not isinstance(label_raw, dict) or "column" not in label_raw or not label_raw.get("classes"):
        problems.append(Problem(path, "'label' must have 'column' and a non-empty 'classes' list", _KEY_HINTS["label"], field="label"))
        label = None
    else:
        classes = tuple(str(c) for c in label_raw["classes"])
        if len(classes) < 2 or len(set(classes)) != len(classes):
            problems.append(Problem(path, f"'label.classes' must list at least two distinct classes, got {list(classes)}", "Fix the class list.", field="label"))
        label = LabelSpec(column=str(label_raw["column"]), classes=classes)

    fields_raw = raw["fields"]
    specs: list[FieldSpec] = []
    if not isinstance(fields_raw, dict) or not fields_raw:
        problems.append(Problem(path, "'fields' must be a non-empty mapping of field name to spec", _KEY_HINTS["fields"], field="fields"))
    else:
        for name, spec in fields_raw.items():
            where = f"fields.{name}"
            if not isinstance(spec, dict) or spec.get("type") not in ("numeric", "categorical", "text"):
                problems.append(Problem(path, "needs `type: numeric`, `type: categorical` or (for identifiers) `type: text`", "Set the field's type.", field=where))
                continue
            known = {"type", "values", "min", "max", "unit", "identifying", "permutation_of"}
            for key in set(spec) - known:
                problems.append(Problem(path, f"unknown key '{key}'", f"Allowed keys are {sorted(known)}.", field=where))
            if spec["type"] == "text":
                if not spec.get("identifying"):
                    problems.append(Problem(path, "a text field must be marked `identifying: true`", "Free text (names, record numbers) is never a model input: mark it identifying, or give it a numeric or categorical type.", field=where))
                else:
                    specs.append(FieldSpec(name=str(name), type="text", identifying=True))
                continue
            source = spec.get("permutation_of")
            if source is not None:
                source_spec = fields_raw.get(source) if isinstance(fields_raw, dict) else None
                if not isinstance(source_spec, dict) or source_spec.get("permutation_of") is not None:
                    problems.append(Problem(path, f"'permutation_of: {source}' must name another field of the manifest (not a negative control itself)", f"Use one of {[n for n in fields_raw if n != name]}.", field=where))
                    continue
                if source_spec.get("type") != spec["type"]:
                    problems.append(Problem(path, f"a negative control must have the type of '{source}' ({source_spec.get('type')})", f"Set `type: {source_spec.get('type')}`.", field=where))
                    continue
                if spec["type"] == "categorical" and [str(v) for v in source_spec.get("values") or []] != [str(v) for v in spec.get("values") or []]:
                    problems.append(Problem(path, f"a negative control must have the values of '{source}' ({source_spec.get('values')})", "Copy the values list, in the same order.", field=where))
                    continue
            if spec["type"] == "categorical":
                values = spec.get("values")
                if not isinstance(values, list) or len(values) < 1:
                    problems.append(Problem(path, "a categorical field needs a non-empty `values` list", "List the allowed values, e.g. `values: [F, M]`.", field=where))
                    continue
                specs.append(FieldSpec(name=str(name), type="categorical", values=tuple(str(v) for v in values), unit=spec.get("unit"), identifying=bool(spec.get("identifying", False)), permutation_of=source))
            else:
                lo, hi = spec.get("min"), spec.get("max")
                if lo is not None and hi is not None and float(lo) >= float(hi):
                    problems.append(Problem(path, f"min {lo} is not below max {hi}", "Fix the range.", field=where))
                specs.append(FieldSpec(name=str(name), type="numeric", min=None if lo is None else float(lo), max=None if hi is None else float(hi), unit=spec.get("unit"), identifying=bool(spec.get("identifying", False)), permutation_of=source))
    if label is not None and label.column in [s.name for s in specs]:
        problems.append(Problem(path, f"the label column '{label.column}' is also listed as a field", "A field must not be the label; remove it from `fields`.", field="fields"))
    if problems or label is None:
        return None, problems
    return FieldSchema(fields=tuple(specs), label=label), []


def _read_csv(csv_path: Path, what: str) -> tuple[pd.DataFrame | None, list[Problem]]:
    if not csv_path.is_file():
        return None, [Problem(csv_path, f"the {what} table does not exist", "Fix the path in the manifest (paths are relative to the manifest's folder).")]
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except Exception as err:  # pandas raises several error types for malformed CSV
        return None, [Problem(csv_path, f"could not be read as CSV ({err})", "Save the table as comma-separated text with a header row.")]
    return table, []


def _read_samples(csv_path: Path, kind: str, check_files: bool) -> tuple[pd.DataFrame | None, list[Problem]]:
    """The slide or image table (``kind`` "slide" or "image"): required columns, one row per
    sample with a unique id, existing files, the kind's optional columns checked; returned keyed
    by ``slide_id`` (an image table's ``image_id``) with absolute paths."""
    id_column, columns, optional = ("slide_id", SLIDE_COLUMNS, "mpp") if kind == "slide" else ("image_id", IMAGE_COLUMNS, "window_center, window_width")
    table, problems = _read_csv(csv_path, f"{kind}s")
    if table is None:
        return None, problems
    missing_cols = [c for c in columns if c not in table.columns]
    if missing_cols:
        return None, [Problem(csv_path, f"the column(s) {missing_cols} are missing", f"The {kind} table needs columns {list(columns)} (and optionally {optional}).", line=1)]
    if kind == "image" and "slide_id" in table.columns:
        return None, [Problem(csv_path, "has a 'slide_id' column", "An image table names its images in 'image_id'; remove or rename the 'slide_id' column.", line=1, field="slide_id")]
    if table.empty:
        return None, [Problem(csv_path, f"has no {kind}s", f"Add one row per {kind}.")]
    paths = []
    row_checks = _mpp_problems if kind == "slide" else _window_problems
    for i, row in table.iterrows():
        line = int(i) + 2
        for col in columns:
            if row[col].strip() == "":
                problems.append(Problem(csv_path, f"'{col}' is empty", f"Fill in the {col}.", line=line, field=col))
        sample_path = (csv_path.parent / row["path"]).resolve() if row["path"] else csv_path.parent
        paths.append(str(sample_path))
        if check_files and row["path"] and not sample_path.is_file():
            problems.append(Problem(csv_path, f"{kind} file {sample_path} does not exist ({kind} '{row[id_column]}')", f"Fix the path (relative to the {kind} table's folder) or remove the row.", line=line, field="path"))
        problems += row_checks(csv_path, row, line)
    for i, sample_id in table[id_column][table[id_column].duplicated()].items():
        problems.append(Problem(csv_path, f"{id_column} '{sample_id}' appears more than once", f"Give every {kind} a unique {id_column}.", line=int(i) + 2, field=id_column))
    table = table.assign(path=paths).rename(columns={id_column: "slide_id"})
    numeric = ["mpp"] if kind == "slide" else ["window_center", "window_width"]  # an image table always has both (NaN: not given)
    for col in numeric:
        if col in table.columns:
            table[col] = pd.to_numeric(table[col], errors="coerce")
        elif kind == "image":
            table[col] = np.nan
    return table, problems


def _mpp_problems(csv_path: Path, row: pd.Series, line: int) -> list[Problem]:
    """A slide row's optional ``mpp``: a plausible level-0 resolution."""
    if "mpp" not in row or not row["mpp"].strip():
        return []
    try:
        mpp = float(row["mpp"])
    except ValueError:
        mpp = float("nan")
    if 0.05 <= mpp <= 20:
        return []
    return [Problem(csv_path, f"mpp '{row['mpp']}' is not a plausible microns-per-pixel value", "Give the level-0 resolution in microns per pixel (0.25 at 40x, 0.5 at 20x) or leave it empty to use the slide's metadata.", line=line, field="mpp")]


def _window_problems(csv_path: Path, row: pd.Series, line: int) -> list[Problem]:
    """An image row's optional display window: both values or neither, a number and a width > 0."""
    given = [c for c in ("window_center", "window_width") if c in row and row[c].strip()]
    if not given:
        return []
    if len(given) != 2:
        return [Problem(csv_path, f"only {given[0]} is given", "Give both window_center and window_width, or neither (the file's own window is used).", line=line, field=given[0])]
    try:
        center, width = float(row["window_center"]), float(row["window_width"])
    except ValueError:
        center, width = float("nan"), float("nan")
    if np.isfinite(center) and width > 0:
        return []
    return [Problem(csv_path, f"window {row['window_center']!r}/{row['window_width']!r} is not a number and a width > 0", "Give the display window's centre and width in the image's grey levels (after the DICOM rescale).", line=line, field="window_width")]


def _check_window(manifest: Path, window: Any) -> list[Problem]:
    """The manifest's optional ``window: {center: C, width: W}`` (display window for grey images)."""
    if window is None:
        return []
    hint = "Give `window: {center: 40, width: 400}` (grey levels after the DICOM rescale), or remove the key to use each file's own window."
    if not isinstance(window, dict) or set(window) != {"center", "width"}:
        return [Problem(manifest, "'window' must have exactly the keys 'center' and 'width'", hint, field="window")]
    try:
        center, width = float(window["center"]), float(window["width"])
    except (TypeError, ValueError):
        return [Problem(manifest, f"'window' values must be numbers, got {window}", hint, field="window")]
    if not np.isfinite(center):
        return [Problem(manifest, f"'window.center' must be a finite number, got {window['center']!r}", hint, field="window")]
    return [] if width > 0 else [Problem(manifest, f"'window.width' must be > 0, got {width:g}", hint, field="window")]


def _read_clinical(csv_path: Path, schema: FieldSchema) -> tuple[pd.DataFrame | None, list[Problem]]:
    table, problems = _read_csv(csv_path, "clinical")
    if table is None:
        return None, problems
    read = [spec for spec in schema.fields if not spec.permutation_of]  # negative controls are made below, not read
    needed = ["patient_id", *(spec.name for spec in read), schema.label.column]
    missing_cols = [c for c in needed if c not in table.columns]
    if missing_cols:
        return None, [Problem(csv_path, f"the column(s) {missing_cols} are missing", "Add them, or remove those fields from the manifest.", line=1)]
    for i, row in table.iterrows():
        line = int(i) + 2
        if row["patient_id"].strip() == "":
            problems.append(Problem(csv_path, "'patient_id' is empty", "Fill in the patient id.", line=line, field="patient_id"))
        for spec in read:
            issue = spec.check(row[spec.name])
            if issue:
                problems.append(Problem(csv_path, f"{issue} (patient '{row['patient_id']}')", _fix_hint(spec), line=line, field=spec.name))
        label = row[schema.label.column]
        if label not in schema.label.classes:
            problems.append(Problem(csv_path, f"label '{label}' is not one of the classes {list(schema.label.classes)} (patient '{row['patient_id']}')", "Fix the label or add the class to `label.classes` in the manifest.", line=line, field=schema.label.column))
    duplicated = table["patient_id"][table["patient_id"].duplicated()]
    for i, pid in duplicated.items():
        labels = sorted(set(table.loc[table["patient_id"] == pid, schema.label.column]))
        detail = f" with different labels {labels}" if len(labels) > 1 else ""
        problems.append(Problem(csv_path, f"patient '{pid}' appears more than once{detail}", "Keep exactly one row per patient.", line=int(i) + 2, field="patient_id"))
    if problems:
        return None, problems
    out = table[needed].copy()
    for spec in read:
        if spec.type == "numeric":
            out[spec.name] = pd.to_numeric(out[spec.name].replace("", None), errors="coerce").astype(float)
        else:
            out[spec.name] = out[spec.name].where(out[spec.name] != "", None)
    out = out.set_index("patient_id")
    for position, spec in enumerate(schema.fields):
        if spec.permutation_of:
            out[spec.name] = permuted(out[spec.permutation_of], seed=position)
    return out[[*schema.names, schema.label.column]], []


def permuted(column: pd.Series, seed: int) -> pd.Series:
    """A negative control: ``column``'s values permuted across patients (patients sorted by id first,
    so the result depends on the cohort and ``seed``, not on the row order of the table)."""
    ordered = column.sort_index()
    shuffled = ordered.to_numpy()[np.random.default_rng(seed).permutation(len(ordered))]
    return pd.Series(shuffled, index=ordered.index, name=column.name).reindex(column.index)


def _fix_hint(spec: FieldSpec) -> str:
    if spec.type == "categorical":
        return f"Use one of {list(spec.values)}, leave it empty if unknown, or add the value to `fields.{spec.name}.values`."
    bounds = f"between {spec.min:g} and {spec.max:g}" if spec.min is not None and spec.max is not None else "within the field's range"
    unit = f" {spec.unit}" if spec.unit else ""
    return f"Give a number {bounds}{unit}, or leave it empty if unknown."
