"""Is a valid cohort worth training on? Checks on the cohort as a whole, before anything long runs.

`load_manifest` checks every row; a cohort can pass it and still be one nothing can be learned
from — one class only (training "succeeds" with balanced accuracy 1.000 [nan, nan]), a class too
small for the folds, a field nobody filled in. `cohort_issues` finds those; `check_trainable`
is what training calls, and `persam validate` prints the same findings.

Only the patients who have a sample (a slide, or an image) count: they are the ones trained on.
Every clinical row carries one of the declared classes (`load_manifest` refuses any other), so
every such patient is labelled. Negative controls (``permutation_of``) mirror their source
field and are not checked apart from it.

Errors — training refuses to start; `persam validate` and `persam train` exit 2:

- fewer than two classes among the patients who have a sample: a classifier needs both;
- at training (a fold count is known), a declared class with fewer patients than folds —
  stratified folds need a patient of every class in every test fold (a declared class with no
  patient at all is such a class);
- a clinical field empty for every patient who has a sample: there is nothing to learn from it.

Warnings — printed (``warning: ...`` on stderr by the CLI), nothing refused:

- a field with one value across those patients: it carries no information;
- clinical rows whose patient has no sample: those patients are not used;
- at `persam validate`, which knows no fold count: a class with fewer patients than the default
  number of folds (`TrainConfig.n_folds`, 5), with the largest ``--folds`` that would work.

A sample whose patient has no clinical row is not a warning but a manifest error (`load_manifest`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from persam_lib.cohort.manifest import Cohort, ManifestError, Problem

_SHOWN = 10  # ids listed by name in one message


class CohortError(ManifestError):
    """A valid cohort that cannot be trained on; lists every reason, each naming what to fix."""

    def __init__(self, problems: list[Problem]):
        super().__init__(problems)
        self.args = (errors_message([str(p) for p in problems]),)


def errors_message(errors: list[str]) -> str:
    """The cohort's errors (`cohort_issues`) as one message: the error itself, or a list."""
    if len(errors) == 1:
        return errors[0]
    return f"{len(errors)} problem(s) make the cohort unfit for training:\n" + "\n".join(f"  - {e}" for e in errors)


def cohort_issues(cohort: Cohort, n_folds: int | None) -> tuple[list[str], list[str]]:
    """The cohort's errors and warnings (see the module docstring), each one line naming the
    file, field, class or ids and what to do. With ``n_folds`` None (`persam validate`), classes
    are compared with the default fold count and a small one is a warning, not an error."""
    errors, warnings = _issues(cohort, n_folds)
    return [str(p) for p in errors], [str(p) for p in warnings]


def check_trainable(cohort: Cohort, n_folds: int) -> list[str]:
    """Raise `CohortError` (a ValueError; the CLI exits 2) when ``cohort`` cannot be trained
    with ``n_folds`` cross-validation folds; else return the warnings, for the caller to show."""
    errors, warnings = _issues(cohort, n_folds)
    if errors:
        raise CohortError(errors)
    return [str(p) for p in warnings]


def _issues(cohort: Cohort, n_folds: int | None) -> tuple[list[Problem], list[Problem]]:
    clinical_csv = cohort.root / str(cohort.raw.get("clinical", "clinical.csv"))
    used = cohort.clinical.index.isin(set(cohort.slides["patient_id"]))
    patients = cohort.clinical[used]
    errors: list[Problem] = []
    warnings: list[Problem] = []
    unlabelled = [p for p in cohort.unlabelled if p in set(patients.index)]
    if unlabelled:
        first = ", ".join(unlabelled[:5]) + (" ..." if len(unlabelled) > 5 else "")
        what = f"{len(unlabelled)} of {len(patients)} patient(s) have no label in column '{cohort.schema.label.column}' ({first})"
        if n_folds is not None:  # training: every patient needs its label
            errors.append(Problem(clinical_csv, f"{what}: training needs the label of every patient", "Fill in the labels, or leave those patients out; a cohort of new patients is for `persam predict` and `persam explain`, not for training.", field=cohort.schema.label.column))
            return errors, warnings
        warnings.append(Problem(clinical_csv, f"the cohort is {cohort.labelling}: {what}", "Fine for `persam predict` and `persam explain` (with labels they are also scored); `persam train` and `compare` need every label.", field=cohort.schema.label.column))
        patients = patients.drop(index=unlabelled)
        if patients.empty:
            return errors, warnings
    errors_, warnings_ = _class_issues(cohort, clinical_csv, patients, n_folds)
    errors += errors_
    warnings += warnings_
    errors_, warnings_ = _field_issues(cohort, clinical_csv, patients)
    errors += errors_
    warnings += warnings_
    unused = _unused_patients(cohort, clinical_csv, used)
    if unused:
        warnings.append(unused)
    return errors, warnings


def _class_issues(cohort: Cohort, clinical_csv: Path, patients: pd.DataFrame, n_folds: int | None) -> tuple[list[Problem], list[Problem]]:
    """Two classes at least; every declared class at least as many patients as folds."""
    label = cohort.schema.label
    with_sample = _with_sample(cohort)
    counts = patients[label.column].value_counts().reindex(list(label.classes), fill_value=0)
    present = [c for c in label.classes if counts[c] > 0]
    if len(present) < 2:
        absent = [c for c in label.classes if counts[c] == 0]
        only = f"only class '{present[0]}' is present" if present else "no class is present"
        problem = f"{only} among the {len(patients)} patient(s) {with_sample} (declared classes {list(label.classes)})"
        hint = f"A classifier needs patients of at least two classes: add patients of class {_names(absent)}, or check the label column '{label.column}'."
        return [Problem(clinical_csv, problem, hint, field=label.column)], []
    folds = n_folds
    if folds is None:
        from persam_lib.train.loop import TrainConfig

        folds = TrainConfig.n_folds
    errors, warnings = [], []
    found = errors if n_folds is not None else warnings
    for name in label.classes:
        if counts[name] == 0:
            found.append(Problem(clinical_csv, f"class '{name}' has no patient {with_sample}", f"Remove '{name}' from `label.classes` in the manifest, or add patients of class '{name}'.", field=label.column))
    small = [c for c in present if counts[c] < folds]
    if small:
        listed = ", ".join(f"'{c}' ({int(counts[c])})" for c in small)
        smallest = int(counts[present].min())
        against = f"the default {folds} folds" if n_folds is None else f"the {folds} folds (every test fold needs a patient of every class)"
        problem = f"class{'es' if len(small) > 1 else ''} {listed} {'have' if len(small) > 1 else 'has'} fewer patients {with_sample} than {against}"
        more = f"add patients of class {_names(small)}"
        hint = f"Train with --folds <= {smallest}, or {more}." if smallest >= 2 else f"{more[0].upper()}{more[1:]}: cross-validation needs at least 2 patients per class."
        found.append(Problem(clinical_csv, problem, hint, field=label.column))
    return errors, warnings


def _field_issues(cohort: Cohort, clinical_csv: Path, patients: pd.DataFrame) -> tuple[list[Problem], list[Problem]]:
    """A field empty for every used patient is an error; one with a single value, a warning."""
    errors, warnings = [], []
    n = len(patients)
    for spec in cohort.schema.fields:
        if spec.permutation_of:
            continue
        values = patients[spec.name].dropna()
        if values.empty:
            errors.append(Problem(clinical_csv, f"the field is empty for every patient {_with_sample(cohort)} ({n} patient(s)); nothing can be learned from it", f"Fill in the column '{spec.name}', or remove '{spec.name}' from `fields` in the manifest.", field=spec.name))
            continue
        distinct = values.unique()
        if len(distinct) == 1:
            value = f"{distinct[0]:g}" if spec.type == "numeric" else str(distinct[0])
            missing = n - len(values)
            also = f" ({missing} patient(s) have no value)" if missing else ""
            problem = f"every patient {_with_sample(cohort)} has the value '{value}'{also}; a constant field carries no information"
            warnings.append(Problem(clinical_csv, problem, f"Remove '{spec.name}' from `fields` in the manifest, or check the column.", field=spec.name))
    return errors, warnings


def _unused_patients(cohort: Cohort, clinical_csv: Path, used: "np.ndarray") -> Problem | None:
    """One warning naming the clinical rows (by patient id and line) whose patient has no sample."""
    lines = [(pid, i + 2) for i, (pid, is_used) in enumerate(zip(cohort.clinical.index, used)) if not is_used]
    if not lines:
        return None
    shown = ", ".join(f"'{pid}' (line {line})" for pid, line in lines[:_SHOWN])
    more = f" and {len(lines) - _SHOWN} more" if len(lines) > _SHOWN else ""
    problem = f"{len(lines)} patient(s) have no {cohort.sample_name} and are not used: {shown}{more}"
    return Problem(clinical_csv, problem, f"Add their {cohort.sample_name}s to the {cohort.sample_name} table, or remove those rows from the clinical table.", field="patient_id")


def _with_sample(cohort: Cohort) -> str:
    return "with an image" if cohort.sample_name == "image" else "with a slide"


def _names(classes: list[str]) -> str:
    return " or ".join(f"'{c}'" for c in classes) if classes else "another class"
