"""The sections chapters share, computed: each function returns the table, text or figure one
section shows, so a notebook cell is a call and a display.

Every chapter about a cohort opens with `cohort_overview`; the chapters that train models show
`models_table` and `models_figure`; those that attribute show `attribution_summary`.

The explanation chapters (attention over slides, radiographs) explain their models with
`explain_models`, then show the same four sections: how far attention moves (`shift_table`,
`shift_figure`), the null test (`null_test_section`), attention against the ground truth
(`truth_section`) and heatmaps of the alteration worth showing (`comparison_figures`, which asks
`persam_lib.explain.report.field_to_show`: the ground truth's deciding field, or without ground
truth the field that moves attention most). `explanation_results` is what they publish.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from persam_lib.book.chapter import Chapter
from persam_lib.cohort.manifest import Cohort
from persam_lib.cohort.truth import GroundTruth
from persam_lib.explain.attention import Explanation, explain_run, write_table
from persam_lib.explain.attributions import Attributions
from persam_lib.explain.records import ORIGINAL
from persam_lib.explain.report import ExplanationReport, example_slides, explanation_report, field_to_show, null_fields_of, record_to_show, sample_background, slide_maps
from persam_lib.features.store import SlideFeatures
from persam_lib.explain.summary import mean_ci
from persam_lib.plots.figures import alteration_grid, metric_intervals, record_comparison, shift_by_field, slide_overview
from persam_lib.plots.tables import with_intervals
from persam_lib.train.run import Run

LAST_LAYER = "last layer"  # the map the book draws (see `persam_lib.explain.report.MAP_NAMES`)
NULL_COLUMNS = ("field_mean", "null_mean", "difference", "p_value", "moves_more")
MODEL_COLUMNS = {
    "n": "patients", "balanced_accuracy": "balanced accuracy [95% CI]", "auroc": "AUROC [95% CI]",
    "accuracy_regions_agree": "accuracy, regions agree", "accuracy_regions_disagree": "accuracy, regions disagree",
}


def cohort_description(chapter: Chapter) -> Markdown:
    """What the cohort is: the demo cohort's design when the chapter runs on it, else what the
    user's manifest declares (fields by type, label, ground truth or not), never the demo's names."""
    from persam_lib.cohort.demo import DESCRIPTION

    cohort = chapter.cohort
    if chapter.ws.demo_manifest == cohort.manifest_path:
        return Markdown(DESCRIPTION)
    kinds = {"categorical": [], "numeric": [], "text": []}
    for spec in cohort.schema.fields:
        kinds.setdefault(spec.type, []).append(f"`{spec.name}`")
    parts = [f"{k} {', '.join(v)}" for k, v in kinds.items() if v]
    truth = (f"Its ground truth names the regions and the field that decides which one is diagnostic (`{chapter.truth.deciding_field}`)."
             if chapter.truth is not None else "It ships no ground-truth regions: the chapters say what they leave out without them.")
    return Markdown(f"This book is built on **your cohort** `{cohort.name}`: {len(cohort.schema.label.classes)} classes of `{cohort.schema.label.column}` "
                    f"({', '.join(cohort.schema.label.classes)}); fields: {'; '.join(parts)}. {truth}")


def deciding_field_note(chapter: Chapter) -> Markdown:
    """Which field the cohort's ground truth says decides the diagnostic region, for a chapter's text."""
    if chapter.truth is None:
        return Markdown("*This cohort ships no ground truth, so no field is known to decide where attention should go; the sections below show what the record changes.*")
    return Markdown(f"In this cohort the ground truth names `{chapter.truth.deciding_field}` as the field that decides which region is diagnostic; "
                    f"{', '.join(f'`{f}`' for f in chapter.truth.noise_fields) or 'no field'} should not matter.")


def cohort_overview(cohort: Cohort) -> Markdown:
    """One line: the cohort's name, samples, patients, fields, label with its classes' counts,
    and the identifying fields no model reads and the book never shows."""
    label = cohort.schema.label.column
    counts = cohort.clinical[label].value_counts()
    hidden = list(cohort.identifying.columns) if cohort.identifying is not None else []
    return Markdown(f"**{cohort.name}**: {len(cohort.slides)} {cohort.sample_name}s of {len(cohort.clinical)} patients; "
                    f"fields {', '.join(f'`{f}`' for f in cohort.schema.names)}; label `{label}` "
                    f"({', '.join(f'{c}: {int(counts.get(c, 0))}' for c in cohort.schema.label.classes)})"
                    + (f"; identifying field(s) kept out of models and book: {', '.join(f'`{f}`' for f in hidden)}." if hidden else "."))


def models_table(table: pd.DataFrame, columns: list[str] | None = None) -> pd.DataFrame:
    """`compare_models`' table as shown: one row per model, balanced accuracy and AUROC as
    "mean [low, high]", the columns `MODEL_COLUMNS` names renamed; only ``columns`` (raw names) when given."""
    shown = with_intervals(table, ["balanced_accuracy", "auroc"]).set_index("model")
    if columns is not None:
        shown = shown[[c for c in columns if c in shown]]
    return shown.rename(columns=MODEL_COLUMNS)


def models_figure(table: pd.DataFrame, metrics: tuple[str, ...] | list[str] = ("balanced_accuracy", "auroc")) -> Figure:
    """Each of ``metrics`` per model with its 95% CI (`compare_models`' table), side by side; model names on the first panel only."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 1.6 + 0.45 * len(table)), constrained_layout=True, squeeze=False)
    for i, (ax, metric) in enumerate(zip(axes[0], metrics)):
        metric_intervals(table, metric, ax=ax)
        if i:
            ax.set_yticklabels([])
    return fig


def attribution_summary(attributions: dict[str, Attributions], shap_fields: list[str] | tuple[str, ...] = ()) -> pd.DataFrame:
    """Per model: the Spearman correlation of attention with the size of the Integrated Gradients
    per patch (mean [95% CI] over samples), the largest completeness gap, the mean absolute logit
    change, the most IG steps used, and the mean absolute SHAP value of each of ``shap_fields``."""
    rows = []
    for m, a in attributions.items():
        rho, lo, hi = mean_ci(a.slides["ig_attention_spearman"].to_numpy())
        rows.append({"model": m, "Spearman rho (attention vs |IG|)": f"{rho:.2f} [{lo:.2f}, {hi:.2f}]", "max completeness gap": a.slides["ig_delta"].max(),
                     "mean |logit change|": a.slides["logit_change"].abs().mean(), "IG steps (most)": a.slides["ig_steps"].max(),
                     **{f"|SHAP| {f}": a.shap[f].abs().mean() for f in shap_fields if len(a.shap)}})
    return pd.DataFrame(rows).set_index("model")


def explain_models(chapter: Chapter, runs: dict[str, Run], features_dir: str | Path | None, *, save_tables: bool = False) -> tuple[dict[str, Explanation], dict[str, ExplanationReport]]:
    """Each run's explanation under the default alterations and its report (shift, null tests
    against `null_fields_of` the cohort and ground truth, ground-truth scores); with
    ``save_tables`` each attention table is written to the workspace's ``attention_path``."""
    nulls = null_fields_of(chapter.cohort, chapter.truth)
    explanations, reports = {}, {}
    for model, run in runs.items():
        explanations[model] = explain_run(run, chapter.cohort, features_dir, progress=False)
        if save_tables:
            write_table(explanations[model].attention, chapter.ws.out.attention_path(model))
        reports[model] = explanation_report(explanations[model], chapter.cohort, chapter.truth, nulls)
    return explanations, reports


def explanation_overview(chapter: Chapter, explanations: dict[str, Explanation]) -> Markdown:
    """One line: how many samples, how many alterations each, and the null fields."""
    first = next(iter(explanations.values()))
    nulls = null_fields_of(chapter.cohort, chapter.truth)
    sample = chapter.cohort.sample_name
    return Markdown(f"{chapter.cohort.slides.shape[0]} {sample}s; {first.attention['record'].nunique() - 1} alterations per {sample}; "
                    f"fields the models should ignore (the null): {', '.join(f'`{f}`' for f in nulls) or 'none declared'}.")


def last_layer_shift(reports: dict[str, ExplanationReport]) -> pd.DataFrame:
    """Every model's shift summary (per field, with CIs) for the last-layer map, with a ``model`` column."""
    shift = pd.concat([r.shift_summary.assign(model=m) for m, r in reports.items()])
    return shift[shift["map"] == LAST_LAYER]


def shift_table(reports: dict[str, ExplanationReport], metrics: list[str], fmt: str = ".2f") -> pd.DataFrame:
    """``metrics`` of `last_layer_shift` as "mean [low, high]", indexed by model and field."""
    return with_intervals(last_layer_shift(reports), metrics, fmt=fmt).set_index(["model", "field"])[metrics]


def shift_figure(reports: dict[str, ExplanationReport], metric: str = "jsd") -> Axes:
    """Mean shift per field and model with 95% CIs (`shift_by_field` over `last_layer_shift`)."""
    return shift_by_field(last_layer_shift(reports), metric)


def null_test_section(reports: dict[str, ExplanationReport], columns: tuple[str, ...] = NULL_COLUMNS) -> list:
    """What the null-test section shows: each field against each null field (last-layer maps),
    the difference as "mean [low, high]", indexed by model, field and null field; models whose
    attention moves under no alteration are named in a sentence instead (every difference is 0
    and no test applies); a note when the cohort declares no null field."""
    tests = pd.concat([r.null_tests.assign(model=m) for m, r in reports.items()])
    if tests.empty:
        return [Markdown("*No null field is declared for this cohort (see `permutation_of` and `noise_fields` in the README).*")]
    tests = tests[tests["map"] == LAST_LAYER]
    still = [m for m, part in tests.groupby("model", sort=False) if (part["field_mean"] == 0).all() and (part["null_mean"] == 0).all()]
    shown: list = []
    if still:
        shown.append(Markdown(f"Attention of {', '.join(still)} does not move under any alteration (their attention cannot read the record), so every difference is 0 and no test applies."))
    moving = tests[~tests["model"].isin(still)]
    if len(moving):
        shown.append(with_intervals(moving, ["difference"], fmt=".3f").set_index(["model", "field", "null_field"])[list(columns)])
    return shown


def truth_section(reports: dict[str, ExplanationReport], truth: GroundTruth | None, sample_name: str = "slide") -> list:
    """What the ground-truth section shows: attention mass on the diagnostic region and its AUROC
    ("mean [low, high]") per source of attention (each model's maps, uniform, random) and record
    group, and per model the share of samples whose attention moved to the newly diagnostic region
    when the deciding field was flipped; a note when the cohort ships no ground truth."""
    if truth is None:
        return [Markdown("*This cohort ships no ground-truth regions.*")]
    table = pd.concat([r.truth for r in reports.values()]).drop_duplicates(subset=["attention", "record"])
    shown: list = [with_intervals(table, ["mass_diagnostic", "auroc"], fmt=".3f").set_index(["attention", "record"]).rename(columns={"slides": f"{sample_name}s"})]
    for m, r in reports.items():
        if r.moved:
            shown.append(Markdown(f"**{m}**: flipping `{truth.deciding_field}` raised attention on the newly diagnostic region in "
                                  f"{r.moved['moved']:.0%} [{r.moved['moved_low']:.0%}, {r.moved['moved_high']:.0%}] of {r.moved['slides']} {sample_name}s "
                                  f"(mean mass {r.moved['mass_before']:.3f} → {r.moved['mass_after']:.3f})."))
    return shown


def own_truth_row(report: ExplanationReport) -> pd.Series:
    """The report's ground-truth row for the model's own last-layer map under the original record
    (not the uniform or random baselines; the last-layer map comes first)."""
    truth = report.truth
    return truth[~truth["attention"].isin(["uniform", "random"]) & (truth["record"] == "original record")].iloc[0]


def explanation_results(reports: dict[str, ExplanationReport], *, moved_name: str = "moved_to_new_region", auroc: bool = True) -> dict[str, float]:
    """The numbers an explanation chapter publishes, per model: ``<model>_jsd_<field>`` (last
    layer), ``<model>_<moved_name>``, ``<model>_mass_diagnostic`` and (with ``auroc``)
    ``<model>_auroc_diagnostic`` under the original record."""
    results: dict[str, float] = {}
    for m, r in reports.items():
        last = r.shift_summary[r.shift_summary["map"] == LAST_LAYER].set_index("field")
        results.update({f"{m}_jsd_{f}": float(v) for f, v in last["jsd"].items()})
        if r.moved:
            results[f"{m}_{moved_name}"] = r.moved["moved"]
        if r.truth is not None:
            own = own_truth_row(r)
            results[f"{m}_mass_diagnostic"] = float(own["mass_diagnostic"])
            if auroc:
                results[f"{m}_auroc_diagnostic"] = float(own["auroc"])
    return results


@dataclass(frozen=True)
class Examples:
    """The samples a chapter draws, with what they are drawn over: per sample its background
    (RGB thumbnail, its downsample, the tissue mask or None) and its region masks (None without
    ground truth)."""

    ids: list[str]
    backgrounds: dict[str, tuple[np.ndarray, float, np.ndarray | None]]
    regions: dict[str, dict[str, np.ndarray] | None]


def example_samples(chapter: Chapter, n: int, features_dir: str | Path | None) -> Examples:
    """`example_slides` (with ground truth: samples whose regions disagree) with their backgrounds and regions, each read once."""
    ids = example_slides(chapter.cohort, n, chapter.truth)
    backgrounds = {s: sample_background(chapter.cohort, s, features_dir) for s in ids}
    regions = {s: chapter.truth.region_masks(s) if chapter.truth is not None else None for s in ids}
    return Examples(ids, backgrounds, regions)


def overview_figure(chapter: Chapter, examples: Examples, n: int = 4) -> Figure:
    """The first ``n`` examples side by side, regions outlined, each titled with its pseudonym and its deciding field's value."""
    fig, axes = plt.subplots(1, n, figsize=(13, 3.6), constrained_layout=True, squeeze=False)
    for ax, sample in zip(axes[0], examples.ids[:n]):
        label = chapter.record_label(sample)
        slide_overview(examples.backgrounds[sample][0], regions=examples.regions[sample], ax=ax, title=f"{chapter.names.slide(sample)}: {label}" if label else chapter.names.slide(sample))
    for ax in axes[0][len(examples.ids[:n]):]:
        ax.axis("off")
    return fig


def comparison_figures(chapter: Chapter, examples: Examples, explanations: dict[str, Explanation], reports: dict[str, ExplanationReport], limit: int | None = None) -> list[Figure]:
    """Per example (the first ``limit``) and model: the regions, attention under the original
    record and under the alteration of `field_to_show`, and their difference."""
    fields = {m: field_to_show(reports[m].shift, chapter.truth) for m in explanations}
    figures = []
    for sample in examples.ids[:limit]:
        thumb, downsample, tissue = examples.backgrounds[sample]
        for m, explanation in explanations.items():
            coords, size, maps = slide_maps(explanation, sample)
            shown = record_to_show(list(maps), fields[m])
            label = chapter.record_label(sample, fields[m])
            title = f"{m} — {chapter.names.slide(sample)}" + (f" ({label})" if label else "")
            figures.append(record_comparison(thumb, downsample, coords, size, maps[ORIGINAL], maps[shown], shown, regions=examples.regions[sample], tissue=tissue, suptitle=title))
    return figures


def alteration_figure(chapter: Chapter, examples: Examples, model: str, explanation: Explanation) -> Figure:
    """Small multiples for the first example: attention under the original record, then its change under every alteration."""
    sample = examples.ids[0]
    thumb, downsample, tissue = examples.backgrounds[sample]
    coords, size, maps = slide_maps(explanation, sample)
    altered = {k: v for k, v in maps.items() if k != ORIGINAL}
    return alteration_grid(thumb, downsample, coords, size, maps[ORIGINAL], altered, tissue=tissue, regions=examples.regions[sample], suptitle=f"{model} — {chapter.names.slide(sample)}")


def patch_projection(bags: dict[str, SlideFeatures], truth: GroundTruth | None) -> tuple[pd.DataFrame, float]:
    """All patches' features in two principal components of the standardised features (columns
    PC1, PC2, and ``patch``: `GroundTruth.patch_regions` when there is ground truth) and the share
    of the variance the two components hold."""
    from sklearn.decomposition import PCA

    stacked = np.concatenate([b.features for b in bags.values()])
    standardised = (stacked - stacked.mean(0)) / np.maximum(stacked.std(0), 1e-6)
    pca = PCA(n_components=2, random_state=0).fit(standardised)
    points = pd.DataFrame(pca.transform(standardised), columns=["PC1", "PC2"])
    if truth is not None:
        points["patch"] = [kind for slide_id, bag in bags.items() for kind in truth.patch_regions(slide_id, bag.coords, bag.patch_size_level0)]
    return points, float(pca.explained_variance_ratio_.sum())
