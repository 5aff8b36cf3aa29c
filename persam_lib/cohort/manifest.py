"""Read a cohort manifest (YAML) and validate it into a `Cohort`.

A manifest names a sample table — ``slides:`` (whole-slide images) or ``images:`` (2-D images:
PNG, TIFF or DICOM) — a clinical table, the label and the clinical fields.
Every problem found is reported with the file, the line of the CSV, the field, what is wrong
and what to do, and *all* problems are collected before raising, so a user fixes a table
in one pass rather than one error at a time.

Ids that become file names — slide_id, image_id, patient_id and the cohort name — must be safe
file names (`persam_lib.io.paths.SAFE_ID`), so no output can land outside its folder. Paths to
input files may be absolute or relative (to the table's folder); one that is missing, a
directory, a device or unreadable is reported as exactly that.

Tables are read as UTF-8; a UTF-8 byte-order mark (Excel's "CSV UTF-8") is accepted silently.
A file saved as UTF-16 ("Unicode Text"), as Latin-1/Windows-1252 (Excel's plain "CSV") or with
';' or tab separators is reported with that likely cause and how to re-save it.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from persam_lib.cohort.schema import FieldSchema, FieldSpec, LabelSpec
from persam_lib.io.paths import id_problem, input_file_problem
from persam_lib.io.yaml_files import YamlFileError, compose_yaml, node_value

REQUIRED_KEYS = ("cohort", "clinical", "label", "fields")
SAMPLE_KEYS = ("slides", "images")  # exactly one: the modality of the cohort
OPTIONAL_KEYS = ("truth", "window", "groups")
SLIDE_COLUMNS = ("slide_id", "patient_id", "path")
UNLABELLED = -1  # `Cohort.labels` of a patient without a label
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
        """Label index (0..n_classes-1) per patient; `UNLABELLED` (-1) for a patient without a label
        (a cohort of new patients: predict and explain read it, `check_trainable` refuses to train on it)."""
        classes = list(self.schema.label.classes)
        return self.clinical[self.schema.label.column].map(lambda v: classes.index(v) if v in classes else UNLABELLED).astype(int)

    @property
    def unlabelled(self) -> list[str]:
        """The patients whose label is empty (or whose table has no label column)."""
        return [str(p) for p, v in self.clinical[self.schema.label.column].items() if v is None or v == "" or v != v]

    @property
    def labelling(self) -> str:
        """"labelled" (every patient), "unlabelled" (none) or "partly labelled"."""
        missing = len(self.unlabelled)
        return "labelled" if missing == 0 else "unlabelled" if missing == len(self.clinical) else "partly labelled"

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


def unreadable_report(cohort: Cohort, reasons: dict[str, str]) -> str:
    """One message listing every sample (slide or image) of ``cohort`` that could not be read:
    ``reasons`` maps sample id to why (starting with its file) and what to do. The one format
    `persam validate` uses for slides and images, so a user fixes every file in one pass."""
    patients = dict(zip(cohort.slides["slide_id"], cohort.slides["patient_id"]))
    name = cohort.sample_name
    lines = [f"  - {name} '{sample}' (patient '{patients.get(sample, '?')}'): {reason}" for sample, reason in reasons.items()]
    return f"{cohort.manifest_path}: {len(reasons)} {name}(s) could not be read:\n" + "\n".join(lines) + f"\nFix those files, or remove their rows from the {name} table."


def _load_raw(path: Path) -> tuple[Any, dict[str, int], list[Problem]]:
    """The manifest's plain-data content, the line of each top-level key, and the problem (file
    and line) when it is missing, not UTF-8, malformed or uses a tag that is not plain YAML."""
    try:
        node = compose_yaml(path, "manifest")
        raw = None if node is None else node_value(node, path, "manifest")
    except YamlFileError as err:
        return None, {}, [Problem(err.path, err.problem, err.hint, line=err.line)]
    lines = {}
    if isinstance(node, yaml.MappingNode):
        lines = {str(key.value): key.start_mark.line + 1 for key, _ in node.value if isinstance(key, yaml.ScalarNode)}
    return raw, lines, []


def _read(path: Path, *, check_files: bool) -> tuple[Cohort | None, list[Problem]]:
    path = path.resolve()
    raw, lines, problems = _load_raw(path)
    if problems:
        return None, problems
    if not isinstance(raw, dict):
        return None, [Problem(path, "must be a YAML mapping", f"Give the keys {list(REQUIRED_KEYS)}.")]

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
    name_problem = id_problem("" if raw["cohort"] is None else str(raw["cohort"]), "cohort name")
    if name_problem:
        problems.append(Problem(path, name_problem, "Rename it in `cohort:` (the name becomes part of output file and folder names).", line=lines.get("cohort"), field="cohort"))

    schema, schema_problems = _parse_schema(path, raw)
    problems += schema_problems
    problems += _check_window(path, raw.get("window"))
    if modality == "slides" and raw.get("window") is not None:
        problems.append(Problem(path, "'window' applies to 2-D images only", "Remove it, or use `images:` for a cohort of 2-D images.", field="window"))
    slides, slide_problems = _read_samples(path.parent / str(raw[modality]), modality[:-1], check_files, (path, modality, lines.get(modality)))
    problems += slide_problems
    clinical = None
    if schema is not None:
        clinical, clinical_problems = _read_clinical(path.parent / str(raw["clinical"]), schema, (path, "clinical", lines.get("clinical")))
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
        truth_problem = input_file_problem(truth_path, "the truth file")
        if truth_problem:
            problems.append(Problem(path, truth_problem, _input_hint(truth_problem, "Fix the 'truth' path so it names the truth YAML file itself (relative to the manifest's folder), or remove the key."), line=lines.get("truth"), field="truth"))
    if problems or schema is None or slides is None or clinical is None:
        return None, problems
    hidden = [f.name for f in schema.fields if f.identifying]
    model_schema = FieldSchema(fields=tuple(f for f in schema.fields if not f.identifying), label=schema.label, groups=schema.groups)
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
        if _yaml_booleans(label_raw["classes"]):
            problems.append(Problem(path, f"'label.classes' {list(classes)} holds true/false: YAML reads unquoted yes/no/on/off/true/false as booleans", f"Quote them, e.g. `classes: ['yes', 'no']`.", field="label"))
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
                if _yaml_booleans(values):
                    problems.append(Problem(path, f"`values` {[str(v) for v in values]} holds true/false: YAML reads unquoted yes/no/on/off/true/false as booleans, so the table's values would never match", "Quote them, e.g. `values: ['yes', 'no']`.", field=where))
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
    groups, group_problems = _parse_groups(path, raw.get("groups"), specs)
    if group_problems:
        return None, group_problems
    return FieldSchema(fields=tuple(specs), label=label, groups=groups), []


def _yaml_booleans(values: Any) -> bool:
    """Whether a YAML list holds booleans: what unquoted yes/no/on/off/true/false become."""
    return isinstance(values, list) and any(isinstance(v, bool) for v in values)


def _parse_groups(path: Path, raw: Any, specs: list[FieldSpec]) -> tuple[tuple[tuple[str, tuple[str, ...]], ...], list[Problem]]:
    """The optional ``groups: {name: [field, ...]}``: fields read together as one record token.

    Every listed field must be a model input (declared, not identifying) and in one group only;
    a field in no group forms a group of its own (`FieldSchema.record_groups`).
    """
    if raw is None:
        return (), []
    hint = "Give `groups: {interview: [age, sex], blood: [ldh]}`: each group a list of fields of `fields:`, each field in one group at most."
    if not isinstance(raw, dict) or not raw:
        return (), [Problem(path, "'groups' must be a non-empty mapping of group name to a list of fields", hint, field="groups")]
    known = {s.name: s for s in specs}
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    groups = []
    for name, members in raw.items():
        where = f"groups.{name}"
        if not isinstance(members, list) or not members:
            problems.append(Problem(path, "a group needs a non-empty list of fields", hint, field=where))
            continue
        for member in map(str, members):
            if member not in known:
                problems.append(Problem(path, f"'{member}' is not a field of the manifest", f"Use fields listed under `fields:` ({sorted(known)}).", field=where))
            elif known[member].identifying:
                problems.append(Problem(path, f"'{member}' is marked identifying, so it is never a model input", "Remove it from the group.", field=where))
            elif member in seen:
                problems.append(Problem(path, f"'{member}' is already in group '{seen[member]}'", "Put each field in one group at most.", field=where))
            else:
                seen[member] = str(name)
        groups.append((str(name), tuple(map(str, members))))
    for name, members in groups:
        if name in known and name not in members and name not in seen:
            problems.append(Problem(path, f"the group name '{name}' is also a field outside the group (an ungrouped field is a group of its own, named after it)", "Rename the group.", field=f"groups.{name}"))
    return tuple(groups), problems


Source = tuple[Path, str, int | None]  # where a table is named: the manifest, its key and that key's line

_RESAVE = "Re-save it as 'CSV UTF-8 (Comma delimited)' (Excel: File > Save As)"


def _input_hint(problem: str, fix: str) -> str:
    """What to do about an input path `input_file_problem` refused: ``fix`` it, unless the file
    is there but unreadable, when its permissions are what to fix."""
    if "permission denied" in problem:
        return "Check the permissions of the file and the folders above it (e.g. `chmod a+r FILE`)."
    return fix


def _read_csv(csv_path: Path, what: str, source: Source) -> tuple[pd.DataFrame | None, list[Problem]]:
    """A table as strings (no NA guessing). A path that is not a readable file is reported at
    the manifest key that names it; a file in the wrong encoding or with the wrong separator is
    reported with that likely cause."""
    manifest, key, key_line = source
    missing = input_file_problem(csv_path, f"the {what} table")
    if missing:
        hint = _input_hint(missing, f"Fix the `{key}:` path so it names the CSV file itself (absolute, or relative to the manifest's folder).")
        return None, [Problem(manifest, missing, hint, line=key_line, field=key)]
    try:
        data = csv_path.read_bytes()
    except OSError as err:
        return None, [Problem(csv_path, f"could not be read ({err.strerror})", "Check the file and its permissions.")]
    text, problems = _decode_csv(csv_path, data)
    if text is None:
        return None, problems
    separator = _separator_problem(csv_path, text)
    if separator:
        return None, [separator]
    try:
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except Exception as err:  # pandas raises several error types for malformed CSV
        return None, [Problem(csv_path, f"could not be read as CSV ({err})", "Save the table as comma-separated text with a header row.")]
    return table, []


def _decode_csv(csv_path: Path, data: bytes) -> tuple[str | None, list[Problem]]:
    """A CSV file's text: UTF-8, with or without a byte-order mark; else why not (UTF-16, or
    most likely Latin-1/Windows-1252 as Excel's plain "CSV" saves) and how to re-save it."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in data[:1024]:
        return None, [Problem(csv_path, "is saved as UTF-16 (Excel's 'Unicode Text'), not as UTF-8 CSV", f"{_RESAVE}.")]
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        start = data.rfind(b"\n", 0, err.start) + 1
        end = data.find(b"\n", err.start)
        text = data[start : end if end >= 0 else len(data)].decode("cp1252", errors="replace").strip()
        shown = text if len(text) <= 60 else text[:57] + "..."
        problems = [Problem(
            csv_path, f"is not UTF-8 text (byte 0x{data[err.start]:02x} in {shown!r}); it is most likely Latin-1/Windows-1252, as Excel saves plain 'CSV'",
            f"{_RESAVE}, or convert it: `iconv -f WINDOWS-1252 -t UTF-8 IN.csv > OUT.csv`.", line=line,
        )]
        separator = _separator_problem(csv_path, data.decode("cp1252", errors="replace"))
        return None, problems + ([separator] if separator else [])


def _separator_problem(csv_path: Path, text: str) -> Problem | None:
    """A header without commas but with ';' or tabs: the table was saved with another separator
    (every table has at least two columns, so a header without a comma is never right)."""
    header = text.split("\n", 1)[0].rstrip("\r")
    if "," in header:
        return None
    for separator, name in ((";", ";"), ("\t", "tab")):
        if separator in header:
            shown = header if len(header) <= 60 else header[:57] + "..."
            return Problem(csv_path, f"looks {name}-separated (the header {shown!r} has no comma)", f"Save it as comma-separated: {_RESAVE[0].lower()}{_RESAVE[1:]}, or replace the separators with ','.", line=1)
    return None


def _read_samples(csv_path: Path, kind: str, check_files: bool, source: Source) -> tuple[pd.DataFrame | None, list[Problem]]:
    """The slide or image table (``kind`` "slide" or "image"): required columns, one row per
    sample with a unique, file-name-safe id, readable files, the kind's optional columns checked;
    returned keyed by ``slide_id`` (an image table's ``image_id``) with absolute paths."""
    id_column, columns, optional = ("slide_id", SLIDE_COLUMNS, "mpp") if kind == "slide" else ("image_id", IMAGE_COLUMNS, "window_center, window_width")
    table, problems = _read_csv(csv_path, f"{kind}s", source)
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
        problems += _id_problems(csv_path, row, id_column, line, f"Rename the {kind} in this table ({kind} ids become file names of its outputs).")
        problems += _id_problems(csv_path, row, "patient_id", line, "Rename the patient here and in the clinical table (patient ids become file names).")
        sample_path = (csv_path.parent / row["path"]).resolve() if row["path"] else csv_path.parent
        paths.append(str(sample_path))
        file_problem = input_file_problem(sample_path, f"{kind} file") if check_files and row["path"] else None
        if file_problem:
            hint = _input_hint(file_problem, f"Fix the path so it names the {kind} file itself (absolute, or relative to the {kind} table's folder), or remove the row.")
            problems.append(Problem(csv_path, f"{file_problem} ({kind} '{row[id_column]}')", hint, line=line, field="path"))
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


def _id_problems(csv_path: Path, row: pd.Series, column: str, line: int, hint: str) -> list[Problem]:
    """A non-empty id in ``column`` that is not a safe file name (an empty one is reported apart)."""
    value = row[column]
    problem = id_problem(value, column) if value.strip() else None
    return [Problem(csv_path, problem, hint, line=line, field=column)] if problem else []


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


def _read_clinical(csv_path: Path, schema: FieldSchema, source: Source) -> tuple[pd.DataFrame | None, list[Problem]]:
    table, problems = _read_csv(csv_path, "clinical", source)
    if table is None:
        return None, problems
    read = [spec for spec in schema.fields if not spec.permutation_of]  # negative controls are made below, not read
    needed = ["patient_id", *(spec.name for spec in read), schema.label.column]
    if schema.label.column not in table.columns:  # a cohort of new patients: no label column at all
        table = table.assign(**{schema.label.column: ""})
    missing_cols = [c for c in needed if c not in table.columns]
    if missing_cols:
        return None, [Problem(csv_path, f"the column(s) {missing_cols} are missing", "Add them, or remove those fields from the manifest.", line=1)]
    for i, row in table.iterrows():
        line = int(i) + 2
        if row["patient_id"].strip() == "":
            problems.append(Problem(csv_path, "'patient_id' is empty", "Fill in the patient id.", line=line, field="patient_id"))
        problems += _id_problems(csv_path, row, "patient_id", line, "Rename the patient here and in the sample table (patient ids become file names).")
        for spec in read:
            issue = spec.check(row[spec.name])
            if issue:
                problems.append(Problem(csv_path, f"{issue} (patient '{row['patient_id']}')", _fix_hint(spec), line=line, field=spec.name))
        label = row[schema.label.column]
        if label.strip() and label not in schema.label.classes:  # empty: an unlabelled patient
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
    out[schema.label.column] = out[schema.label.column].where(out[schema.label.column].str.strip() != "", None)
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
