"""What the chapter "Applying the model to new patients" shows, each part one call.

The model trained in the book is applied to patients it has never seen, as a user would with the
CLI (``persam predict``, ``calibrate``, ``explain``, ``export``): on the demo, a second cohort
generated with another seed and other ids is the external set; on a user's cohort, the manifest of
their new patients. Their labels are withheld first (an unlabelled copy of the manifest is what
is predicted), then used to score the predictions (external validation). Calibration is measured
on the run's out-of-fold predictions and on the new patients, before and after the temperature
fitted on the out-of-fold logits (so the new patients test it). Attention is explained by the fold
ensemble and scored against the new patients' ground truth where they have it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import yaml
from IPython.display import Markdown
from matplotlib.figure import Figure

from persam_lib.book.chapter import Chapter, published_location
from persam_lib.book.privacy import Pseudonyms
from persam_lib.cohort.manifest import Cohort, load_manifest
from persam_lib.cohort.truth import load_truth
from persam_lib.io.atomic import write_text_atomic
from persam_lib.plots.tables import with_intervals
from persam_lib.predict.calibration import Calibration, brier_score, calibrate_run, expected_calibration_error, out_of_fold, reliability, scaled, with_ci
from persam_lib.predict.ensemble import Predictions, by_patient, labelled_outcomes, predict_cohort, score
from persam_lib.train.run import Run

EXTERNAL_FIRST_ID = 1001  # the demo's external cohort: patients P1001…, so no id is one of the training cohort's
UNLABELLED_SUFFIX = ".unlabelled"


@dataclass(frozen=True)
class NewPatients:
    """The new patients as the chapter uses them: a `Chapter` on their cohort (labels, ground
    truth and pseudonyms, when they have them), the unlabelled copy that is predicted, and their
    features."""

    chapter: Chapter
    unlabelled: Cohort
    features_dir: Path
    line: Markdown  # where they came from, for the chapter's first lines

    @property
    def cohort(self) -> Cohort:
        return self.chapter.cohort

    @property
    def labelled(self) -> bool:
        return self.cohort.labelling != "unlabelled"


def withheld_labels(cohort: Cohort, out_dir: Path) -> Path:
    """An unlabelled copy of ``cohort``'s manifest in ``out_dir`` (``manifest.unlabelled.yaml``, whose
    clinical table has no label column), written atomically; its path. The copy is what a user
    holds for new patients: the same fields, no label. Nothing is written beside the cohort's own
    files (a user's data folder may be read-only, and stays theirs): the copy names the cohort's
    slide table and ground truth where they are."""
    manifest = Path(cohort.manifest_path)
    raw = yaml.safe_load(manifest.read_text())
    table = pd.read_csv(manifest.parent / raw["clinical"], dtype=str, keep_default_na=False)
    table = table.drop(columns=[raw["label"]["column"]], errors="ignore")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / f"clinical{UNLABELLED_SUFFIX}.csv", table.to_csv(index=False))
    raw["clinical"] = f"clinical{UNLABELLED_SUFFIX}.csv"
    for key in ("slides", "truth"):
        if raw.get(key):
            raw[key] = str((manifest.parent / str(raw[key])).resolve())
    target = out_dir / f"manifest{UNLABELLED_SUFFIX}.yaml"
    write_text_atomic(target, yaml.safe_dump(raw, sort_keys=False))
    return target


def load_new_patients(chapter: Chapter, new_manifest: str | Path = "", new_features: str | Path = "", *, patients: int = 48, seed: int = 1, encoder: str = "stats") -> NewPatients:
    """The chapter's new patients: those of ``new_manifest`` (a user's), or else a demo cohort of
    ``patients`` generated with ``seed`` and ids from `EXTERNAL_FIRST_ID` in the work dir. Their
    features are ``new_features`` when given, else extracted with ``encoder`` (resumable; the run
    checks they were made like its own)."""
    from persam_lib.cohort.demo import DemoConfig, make_demo_cohort
    from persam_lib.features.config import ExtractConfig
    from persam_lib.features.extract import extract

    ws = chapter.ws
    if str(new_manifest):
        manifest = Path(new_manifest).resolve()
        where = f"the cohort of `{manifest.name}`"
    else:
        manifest = make_demo_cohort(ws.out.new_patients_dir / "cohort", DemoConfig(patients=patients, seed=seed, first_id=EXTERNAL_FIRST_ID), progress=False)
        where = f"a second demo cohort generated with seed {seed} (patients P{EXTERNAL_FIRST_ID:04d} onwards, none of them the training cohort's)"
    cohort = load_manifest(manifest)
    if str(new_features):
        features = Path(new_features).resolve()
        how = f"features brought in `{features.name}`"
    else:
        features = ws.out.new_patients_dir / "features"
        summary = extract(cohort, features, ExtractConfig(encoder=encoder), progress=False)
        how = f"features extracted with the encoder `{encoder}` ({len(summary.written)} now, {len(summary.skipped)} found done, {len(summary.failed)} failed)"
    unlabelled = load_manifest(withheld_labels(cohort, ws.out.new_patients_dir / "unlabelled")) if cohort.labelling != "unlabelled" else cohort
    new_chapter = replace(chapter, cohort=cohort, truth=load_truth(cohort), names=Pseudonyms.for_cohort(cohort))
    line = Markdown(f"**New patients**: {len(cohort.clinical)} patients ({len(cohort.slides)} {cohort.sample_name}s) from {where}; {how}. "
                    f"Their labels are withheld for prediction: the model reads `{Path(unlabelled.manifest_path).name}`, a copy without the label column.")
    return NewPatients(new_chapter, unlabelled, features, line)


def prediction_table(new: NewPatients, predictions: Predictions, rows: int = 8) -> pd.DataFrame:
    """The first ``rows`` patients' predictions as `persam predict` writes them, under pseudonyms."""
    table = by_patient(predictions).head(rows)
    return new.chapter.names.table(table).set_index("patient_id")


def external_validation(run: Run, predictions: Predictions, new: NewPatients) -> pd.DataFrame:
    """Balanced accuracy and AUROC with 95% CIs: the run's out-of-fold predictions (internal
    validation) beside the new patients' (external validation)."""
    internal = run.metrics["overall"]
    external = score(predictions, new.cohort)
    rows = [{"patients": "training cohort, out of fold", **_metric_row(internal)}]
    if external is not None:
        rows.append({"patients": "new patients", **_metric_row(external)})
    table = pd.DataFrame(rows).set_index("patients")
    return with_intervals(table, ["balanced_accuracy", "auroc"], fmt=".3f").rename(columns={"balanced_accuracy": "balanced accuracy [95% CI]", "auroc": "AUROC [95% CI]"})


def _metric_row(metrics: dict) -> dict:
    keys = ("balanced_accuracy", "balanced_accuracy_low", "balanced_accuracy_high", "auroc", "auroc_low", "auroc_high")
    return {"n": int(metrics["n"]), **{k: float(metrics[k]) for k in keys}}


@dataclass(frozen=True)
class CalibrationCheck:
    """Calibration before and after temperature scaling, on the run's out-of-fold predictions
    (where the temperature was fitted) and on the new patients (where it is tested)."""

    fitted: Calibration
    table: pd.DataFrame  # per set × (before, after): ECE and Brier with CIs
    curves: dict[str, tuple[pd.DataFrame, pd.DataFrame]]  # set -> (reliability before, after)


def calibration_check(run: Run, predictions: Predictions, new: NewPatients) -> CalibrationCheck:
    """Fit the temperature on the run's out-of-fold predictions (not stored: `persam calibrate RUN`
    stores it for `persam predict`) and measure ECE and Brier before and after it on both sets."""
    fitted = calibrate_run(run, store=False)
    sets = {"training cohort, out of fold": out_of_fold(run)}
    outcomes = labelled_outcomes(predictions, new.cohort)
    if outcomes is not None:
        sets["new patients"] = outcomes
    rows, curves = [], {}
    for name, (y, probs) in sets.items():
        after = scaled(probs, fitted.temperature)
        for when, p in (("before", probs), (f"after (T = {fitted.temperature:.2f})", after)):
            ece, brier = with_ci(expected_calibration_error, y, p), with_ci(brier_score, y, p)
            rows.append({"patients": name, "temperature scaling": when, "n": len(y), "ece": ece[0], "ece_low": ece[1], "ece_high": ece[2], "brier": brier[0], "brier_low": brier[1], "brier_high": brier[2]})
        curves[name] = (reliability(y, probs), reliability(y, after))
    table = with_intervals(pd.DataFrame(rows), ["ece", "brier"], fmt=".3f").set_index(["patients", "temperature scaling"])
    return CalibrationCheck(fitted, table.rename(columns={"ece": "ECE [95% CI]", "brier": "Brier [95% CI]"}), curves)


def reliability_figure(check: CalibrationCheck) -> Figure:
    """One panel per set: accuracy against confidence of the predicted class, per bin (marker area
    ∝ patients), before and after temperature scaling; the diagonal is perfect calibration."""
    fig, axes = plt.subplots(1, len(check.curves), figsize=(5.2 * len(check.curves), 4.4), constrained_layout=True, squeeze=False)
    for ax, (name, (before, after)) in zip(axes[0], check.curves.items()):
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfectly calibrated")
        for table, label, colour in ((before, "before", "#d62728"), (after, f"after (T = {check.fitted.temperature:.2f})", "#1f77b4")):
            ax.plot(table["confidence"], table["accuracy"], marker="o", color=colour, label=label)
            ax.scatter(table["confidence"], table["accuracy"], s=20 + 8 * table["n"], color=colour, alpha=0.25)
        ax.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="confidence of the predicted class", ylabel="accuracy", title=name)
        ax.legend(loc="upper left", fontsize=8)
    return fig


def export_for_review(run: Run, new: NewPatients, slides: list[str], out_dir: Path) -> pd.DataFrame:
    """What `persam export` writes for ``slides`` of the new patients, in both formats, into
    ``out_dir`` (files named by pseudonym): one row per file with its size and, for a GeoJSON, its
    tiles and measurements (one per record)."""
    from persam_lib.explain.export import export_slides

    rows = []
    for fmt in ("geojson", "tiff"):
        target = out_dir / fmt
        for path in export_slides(run, new.unlabelled, new.features_dir, slides, fmt, target, pseudonyms=True):
            row = {"format": fmt, "file": path.relative_to(target).as_posix(), "kB": round(path.stat().st_size / 1000, 1)}
            if fmt == "geojson":
                features = json.loads(path.read_text())["features"]
                row |= {"tiles": len(features), "measurements": len(features[0]["properties"]["measurements"]) if features else 0}
            rows.append(row)
    table = pd.DataFrame(rows)
    for column in ("tiles", "measurements"):  # a GeoJSON's; blank for the TIFFs rather than NaN
        table[column] = [f"{int(v)}" if pd.notna(v) else "" for v in table.get(column, pd.Series([None] * len(table)))]
    return table.set_index(["format", "file"])


def commands(run: Run, new: NewPatients) -> Markdown:
    """The CLI commands that do what this chapter did, with the chapter's own folders (as seen
    from the project, never a machine path)."""
    run_dir, unlabelled, labelled, features = (published_location(str(p)) for p in (run.path, new.unlabelled.manifest_path, new.cohort.manifest_path, new.features_dir))
    return Markdown(f"""```bash
# score the new patients (labels optional) with the fold ensemble; --fold K for one model, --model final for the model fitted on everyone
persam predict {run_dir} --manifest {unlabelled} --features {features} --out predictions.csv
# with their labels: the same metrics as training, with CIs (external validation)
persam predict {run_dir} --manifest {labelled} --features {features} --out predictions.csv --metrics external.json
# fit the temperature on the run's out-of-fold predictions and store it; predict applies it from then on
persam calibrate {run_dir}
# attention under every alteration of the record, by the fold ensemble
persam explain {run_dir} --manifest {unlabelled} --features {features} --out attention.parquet
# for review in QuPath: one tile per patch with each record's attention as measurements, and a pyramidal TIFF overlay per record
persam export {run_dir} --manifest {unlabelled} --features {features} --format geojson --out review/ --pseudonyms
persam export {run_dir} --manifest {unlabelled} --features {features} --format tiff --out review/ --pseudonyms
```""")


def new_patient_results(run: Run, predictions: Predictions, new: NewPatients, check: CalibrationCheck, report) -> dict[str, float]:
    """The numbers the chapter publishes: external balanced accuracy and AUROC, ECE before and after
    on the new patients, and the attention mass on the diagnostic region under the original record."""
    from persam_lib.book.sections import own_truth_row

    out: dict[str, float] = {"temperature": float(check.fitted.temperature)}
    external = score(predictions, new.cohort)
    if external is not None:
        out |= {"external_balanced_accuracy": float(external["balanced_accuracy"]), "external_auroc": float(external["auroc"])}
        y, probs = labelled_outcomes(predictions, new.cohort)
        out |= {"external_ece_before": expected_calibration_error(y, probs), "external_ece_after": expected_calibration_error(y, scaled(probs, check.fitted.temperature))}
    if report.truth is not None and len(report.truth):
        out["external_mass_diagnostic"] = float(own_truth_row(report)["mass_diagnostic"])
    return {k: float(v) for k, v in out.items() if np.isfinite(v)}
