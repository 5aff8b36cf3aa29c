"""The two PersAMs side by side — ours (`persam`) and the authors' (`persam_paper`) — on identical folds.

`compare_persams` explains both runs under the default alterations and returns what the Models
chapter shows: accuracy with CIs, attention against the ground truth (mass and AUROC on the
diagnostic region, selectivity, the share of slides whose attention moves to the newly
diagnostic region when the deciding field is flipped), per-class maps of one slide, and what a
training step costs against bag size (`persam_lib.models.cost`). The same functions work for any
pair of runs of slide models; without ground truth the attention columns are left out.
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown
from matplotlib.figure import Figure

from persam_lib.book.chapter import Chapter
from persam_lib.book.sections import own_truth_row
from persam_lib.explain.attention import ExplainConfig, Explanation, explain_run
from persam_lib.explain.records import ORIGINAL
from persam_lib.explain.report import ExplanationReport, example_slides, explanation_report, null_fields_of, sample_background, slide_maps
from persam_lib.models import MODEL_INFO
from persam_lib.models.base import ModelSettings
from persam_lib.models.cost import step_costs
from persam_lib.plots.figures import attention_heatmap, slide_overview
from persam_lib.plots.tables import with_intervals
from persam_lib.options import with_overrides
from persam_lib.train.loop import TrainConfig
from persam_lib.train.recipes import with_recipe
from persam_lib.train.run import Run, train_variants

COST_SIZES = (250, 1_000, 2_000)  # bag sizes of the cost table: small enough for a CPU book build

# What closes the gap between PersAM's attention and the diagnostic region: each variant changes
# the default `persam` in one way, trained on the same folds; the first is the design of v1.
# Folder name -> (what the book calls it, the options it changes, flat names as --set takes them).
ABLATION: dict[str, tuple[str, dict]] = {
    "v1_reads_all": ("v1: class token reads every token", {"class_token_reads": "all"}),
    "heads_2": ("2 heads", {"n_heads": 2}),
    "record_groups": ("one token per record group", {"record_tokens": "group"}),
    "full_attention": ("patches attend to patches", {"patch_attention": "full"}),
    "paper_no_attention_loss": ("persam_paper without its attention loss", {"model": "persam_paper", "attention_loss_weight": 0.0}),
}


@dataclass
class PersamComparison:
    """What a section shows: one row per run (`table`), and the explanations and reports behind it."""

    table: pd.DataFrame
    explanations: dict[str, Explanation]
    reports: dict[str, ExplanationReport]


def compare_persams(chapter: Chapter, runs: dict[str, Run], features_dir: str | Path | None) -> PersamComparison:
    """Explain each run (per-class maps for models that have them) and collect one row per run
    (`explained_row`)."""
    nulls = null_fields_of(chapter.cohort, chapter.truth)
    explanations, reports, rows = {}, {}, []
    for name, run in runs.items():
        row, explanations[name], reports[name] = explained_row(name, run, chapter, features_dir, nulls)
        rows.append(row)
    return PersamComparison(pd.DataFrame(rows), explanations, reports)


def explained_row(name: str, run: Run, chapter: Chapter, features_dir: str | Path | None, nulls: list[str]) -> tuple[dict, Explanation, ExplanationReport]:
    """One run's row: its balanced accuracy and AUROC with CIs (out-of-fold, from the run's
    metrics) and, with ground truth, the original record's attention mass on the diagnostic region
    and its AUROC, the selectivity and the share of slides whose attention moved to the newly
    diagnostic region when the deciding field was flipped; with the explanation and its report."""
    model = run.config.model
    explanation = explain_run(run, chapter.cohort, features_dir, config=ExplainConfig(per_class=MODEL_INFO[model].class_maps), progress=False)
    report = explanation_report(explanation, chapter.cohort, chapter.truth, nulls)
    overall = run.metrics["overall"]
    row = {"model": name, **{k: overall[k] for k in overall if k.startswith(("balanced_accuracy", "auroc"))}}
    if report.truth is not None:
        own = own_truth_row(report)
        for measure, column in (("mass_diagnostic", "mass_diagnostic"), ("attention_auroc", "auroc"), ("selectivity", "selectivity")):
            row |= {measure: own[column], f"{measure}_low": own[f"{column}_low"], f"{measure}_high": own[f"{column}_high"]}
    if report.moved:
        row |= {"moved": report.moved["moved"], "moved_low": report.moved["moved_low"], "moved_high": report.moved["moved_high"]}
    return row, explanation, report


def ablation_configs(base: TrainConfig, variants: dict[str, tuple[str, dict]] = ABLATION) -> dict[str, TrainConfig]:
    """Each variant's training configuration: ``base`` changed by its options, with the recipe of
    its model for every option neither ``base`` nor the variant sets."""
    given = {name for name, value in base.to_dict().items() if value != TrainConfig().to_dict()[name]}  # what ``base`` sets (epochs, folds, seed)
    return {folder: with_recipe(with_overrides(base, options), given | set(options)) for folder, (_, options) in variants.items()}


# The slowest models first, so two workers end together (the published PersAM's quadratic attention
# and its 50 sub-bags at validation make it several times the others' cost).
SLOW_FIRST = {"persam_paper": 0, "chexradinet": 1, "transmil": 2}


def train_chapter_runs(chapter: Chapter, features_dir: str | Path | None, runs_dir: str | Path, models: list[str], base: TrainConfig, *, ablation: bool = True, workers: int = 1,
                       variants: dict[str, tuple[str, dict]] = ABLATION) -> None:
    """Train, in one pool of ``workers`` processes, every run the Models chapter shows: each model of
    the comparison (`comparison_configs`, as `compare_models` trains it, into ``runs_dir/<model>``)
    and, with ``ablation`` (and ground truth and a ``persam`` to ablate), each ablation variant
    (`ablation_configs`, into ``runs_dir/ablation/<folder>``), slowest first. The chapter's
    `compare_models` and `ablation` then find them finished (runs resume), so the same runs come
    out; one pool instead of two lets the two workers share the whole load."""
    from persam_lib.train.run import comparison_configs

    configs = comparison_configs(base, list(dict.fromkeys(models)), chapter.cohort.input_kind)
    if ablation and chapter.truth is not None and "persam" in configs:
        configs |= {f"ablation/{folder}": config for folder, config in ablation_configs(base, variants).items()}
    ordered = dict(sorted(configs.items(), key=lambda item: SLOW_FIRST.get(item[1].model, len(SLOW_FIRST))))
    train_variants(chapter.cohort, features_dir, runs_dir, ordered, workers=workers, progress=False)


def ablation(
    chapter: Chapter, features_dir: str | Path | None, out_dir: str | Path, base: TrainConfig, default: Run, variants: dict[str, tuple[str, dict]] = ABLATION, *, workers: int = 1
) -> PersamComparison:
    """``default`` (the chapter's run of ``base``) beside ``base`` changed by each variant's options
    (flat names, as ``--set`` takes them), trained on identical folds into ``out_dir/<folder>``
    (resumable), each explained (`explained_row`); rows are named by the variants' labels."""
    configs = ablation_configs(base, variants)
    runs = train_variants(chapter.cohort, features_dir, out_dir, configs, workers=workers, progress=False)
    compared = compare_persams(chapter, {"default": default} | runs, features_dir)
    labels = {"default": "default"} | {folder: label for folder, (label, _) in variants.items()}
    compared.table.insert(1, "variant", compared.table["model"].map(labels))
    return compared


SHOWN = {
    "balanced_accuracy": "balanced accuracy", "auroc": "AUROC", "mass_diagnostic": "attention on the diagnostic region",
    "attention_auroc": "attention AUROC (diagnostic region)", "selectivity": "selectivity", "moved": "moves when the deciding field flips",
}


def comparison_table(comparison: PersamComparison) -> pd.DataFrame:
    """The rows as shown: every measure as "mean [low, high]", one row per model (or variant)."""
    metrics = [m for m in SHOWN if m in comparison.table]
    index = "variant" if "variant" in comparison.table else "model"
    return with_intervals(comparison.table, metrics, fmt=".3f").set_index(index)[metrics].rename(columns=SHOWN)


def class_maps_figure(chapter: Chapter, comparison: PersamComparison, features_dir: str | Path | None) -> Figure | None:
    """One slide whose regions disagree: its regions, each model's map under the original record,
    then each per-class map of the models that have them (None when no model has per-class maps)."""
    with_classes = [m for m in comparison.explanations if MODEL_INFO[m].class_maps]
    if not with_classes:
        return None
    sample = example_slides(chapter.cohort, 1, chapter.truth)[0]
    thumb, downsample, tissue = sample_background(chapter.cohort, sample, features_dir)
    classes = chapter.cohort.schema.label.classes
    top = 1 + len(comparison.explanations)  # the slide, then each model's map
    bottom = len(with_classes) * len(classes)  # each per-class map
    columns = max(top, bottom)
    fig, axes = plt.subplots(2, columns, figsize=(3.6 * columns, 6.6), constrained_layout=True, squeeze=False)
    regions = chapter.truth.region_masks(sample) if chapter.truth is not None else None
    label = chapter.record_label(sample)
    slide_overview(thumb, tissue, regions, ax=axes[0][0], title=f"{chapter.names.slide(sample)}" + (f": {label}" if label else ""))
    for k, (model, explanation) in enumerate(comparison.explanations.items(), start=1):
        coords, size, maps = slide_maps(explanation, sample)
        attention_heatmap(thumb, downsample, coords, size, maps[ORIGINAL], ax=axes[0][k], title=f"{model}: map", tissue=tissue)
    k = 0
    for model in with_classes:
        for c in classes:
            coords, size, maps = slide_maps(comparison.explanations[model], sample, column=f"attention_class_{c}")
            attention_heatmap(thumb, downsample, coords, size, maps[ORIGINAL], ax=axes[1][k], title=f"{model}: class {c}", vmax=1.0, tissue=tissue)
            k += 1
    for ax in [*axes[0][top:], *axes[1][bottom:]]:
        ax.axis("off")
    plt.close(fig)  # shown where the chapter displays it, not again when its cell ends
    return fig


def cost_table(models: list[str], feature_dim: int, settings: ModelSettings = ModelSettings(), sizes: tuple[int, ...] = COST_SIZES) -> pd.DataFrame:
    """Training step time (ms) and peak memory (MB) of each model at each bag size, measured
    here (`persam_lib.models.cost.step_costs`): rows are bag sizes, columns (measure, model)."""
    costs = pd.DataFrame([vars(c) for c in step_costs(models, list(sizes), settings=settings, feature_dim=feature_dim)])
    table = costs.pivot(index="n_patches", columns="model", values=["step_ms", "peak_mb"])
    table.columns = [f"{'step (ms)' if measure == 'step_ms' else 'peak memory (MB)'}: {model}" for measure, model in table.columns]
    return table.rename_axis("patches in the bag").round(0).astype("Int64")  # whole ms and MB: the noise is larger than a decimal


def comparison_results(comparison: PersamComparison) -> dict[str, float]:
    """What the section publishes: per model its attention mass, selectivity and moved share."""
    results: dict[str, float] = {}
    for row in comparison.table.itertuples():
        for name in ("mass_diagnostic", "selectivity", "moved"):
            value = getattr(row, name, np.nan)
            if value == value:  # not NaN
                results[f"{row.model}_{name}"] = float(value)
    return results


PAIR = ("persam", "persam_paper")


def persam_section(chapter: Chapter, runs: dict[str, Run], features_dir: str | Path | None, *, with_costs: bool = True) -> tuple[PersamComparison | None, list]:
    """What the section "PersAM as published and ours" shows: the comparison table, the per-class
    maps of one slide and the cost table (``with_costs=False``: its heading alone, for a caller
    that measures it meanwhile, as `persam_sections` does); a sentence instead when this build did
    not train both."""
    if not all(m in runs for m in PAIR):
        return None, [Markdown(f"*This build did not train both {' and '.join(f'`{m}`' for m in PAIR)}, so there is nothing to compare.*")]
    pair = compare_persams(chapter, {m: runs[m] for m in PAIR}, features_dir)
    shown: list = [comparison_table(pair)]
    figure = class_maps_figure(chapter, pair, features_dir)
    if figure is not None:
        shown.append(figure)
    shown.append(Markdown("**Cost of one training step** against the bag size, measured while this chapter ran:"))
    if with_costs:
        shown.append(cost_table(list(PAIR), _feature_dim(runs), sizes=COST_SIZES))
    return pair, shown


def persam_sections(chapter: Chapter, runs: dict[str, Run], features_dir: str | Path | None, out_dir: str | Path, base: TrainConfig, *, ablation: bool = True, workers: int = 1) -> tuple[tuple[PersamComparison | None, list], tuple[PersamComparison | None, list]]:
    """The Models chapter's two sections on PersAM, `persam_section` and `ablation_section` (a
    sentence instead when ``ablation`` is off), with the cost table measured in a process of its
    own while the runs of both are explained here: a core each, where one after the other they
    left a core idle at the end of the chapter."""
    measured = all(m in runs for m in PAIR)
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        costs = pool.submit(cost_table, list(PAIR), _feature_dim(runs), sizes=COST_SIZES) if measured else None
        pair, shown = persam_section(chapter, runs, features_dir, with_costs=False)
        if ablation:
            variants, shown_ablation = ablation_section(chapter, runs, features_dir, out_dir, base, workers=workers)
        else:
            variants, shown_ablation = None, [Markdown("*The ablation was not run in this execution (`ablation=False`).*")]
        if costs is not None:
            shown.append(costs.result())
    return (pair, shown), (variants, shown_ablation)


def _feature_dim(runs: dict[str, Run]) -> int:
    """The patch feature dimension the PersAM pair was trained on (the cost table's input width)."""
    return runs[PAIR[0]].model_for_fold(0).config.feature_dim


def ablation_section(chapter: Chapter, runs: dict[str, Run], features_dir: str | Path | None, out_dir: str | Path, base: TrainConfig, *, workers: int = 1) -> tuple[PersamComparison | None, list]:
    """What the ablation section shows (`ablation` of the chapter's `persam` run); a sentence
    instead without ground truth (nothing to score attention against) or without a `persam` run."""
    if chapter.truth is None:
        return None, [Markdown("*This cohort ships no ground-truth regions, so there is no attention to score against them: the ablation is left out.*")]
    if "persam" not in runs:
        return None, [Markdown("*This build did not train `persam`, so there is no default to ablate.*")]
    compared = ablation(chapter, features_dir, out_dir, base, runs["persam"], workers=workers)
    return compared, [comparison_table(compared)]


def section_results(pair: PersamComparison | None, variants: PersamComparison | None) -> dict[str, float]:
    """Both sections' published numbers (`comparison_results`; the ablation's prefixed ``ablation_``)."""
    results = comparison_results(pair) if pair is not None else {}
    if variants is not None:
        results |= {f"ablation_{k}": v for k, v in comparison_results(variants).items()}
    return results
