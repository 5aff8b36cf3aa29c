"""The Models chapter's comparison of the two PersAMs and its ablation, on the tiny cohort."""
import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from IPython.display import Markdown  # noqa: E402

from persam_lib.book.chapter import setup_chapter  # noqa: E402
from persam_lib.book.persam_comparison import ablation_section, comparison_table, cost_table, persam_section, persam_sections, section_results  # noqa: E402
from persam_lib.train.loop import TrainConfig  # noqa: E402
from persam_lib.train.run import train_variants  # noqa: E402

TINY = dict(n_folds=2, epochs=2, patience=2, val_fraction=0.25, d_model=16, n_heads=2, n_layers=2)


@pytest.fixture(scope="module")
def pair(tiny_cohort, tiny_features, tmp_path_factory):
    out = tmp_path_factory.mktemp("pair")
    configs = {"persam": TrainConfig.of(model="persam", **TINY), "persam_paper": TrainConfig.of(model="persam_paper", subbag_size=8, subbags_at_test=2, **TINY)}
    return out, train_variants(tiny_cohort, tiny_features, out, configs, progress=False)


@pytest.mark.slow  # both PersAMs explained on every slide: `make test-slow`, and CI
def test_the_section_compares_accuracy_attention_and_per_class_maps(tiny_cohort_dir, tiny_features, pair, tmp_path, monkeypatch):
    import persam_lib.book.persam_comparison as comparison

    monkeypatch.setattr(comparison, "COST_SIZES", (16, 32))
    chapter = setup_chapter(tmp_path, "", tiny_cohort_dir / "manifest.yaml")
    (compared, shown), (variants, shown_ablation) = persam_sections(chapter, pair[1], tiny_features, tmp_path / "ablation", TrainConfig.of(**TINY), ablation=False)
    assert variants is None and "not run" in shown_ablation[0].data
    costs = shown[-1]  # measured in a process of its own meanwhile, at the sizes of this module
    assert list(costs.index) == [16, 32] and "step (ms): persam_paper" in costs.columns
    table = compared.table.set_index("model")
    assert list(table.index) == ["persam", "persam_paper"]
    for column in ("balanced_accuracy", "balanced_accuracy_low", "mass_diagnostic", "attention_auroc", "selectivity", "moved"):
        assert table[column].notna().all() and ((table[column] >= 0) & (table[column] <= 1)).all(), column
    assert table.at["persam", "balanced_accuracy"] == pair[1]["persam"].metrics["overall"]["balanced_accuracy"]
    shown_table = comparison_table(compared)
    assert "selectivity" in shown_table.columns and shown_table.iloc[0]["selectivity"].count("[") == 1  # "mean [low, high]"
    figure = shown[1]
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert "persam_paper: class A" in titles and "persam_paper: class B" in titles and "persam: map" in titles
    results = section_results(compared, None)
    assert set(results) >= {"persam_mass_diagnostic", "persam_paper_selectivity", "persam_moved"}


def test_cost_table_has_a_row_per_bag_size_and_both_models():
    table = cost_table(["persam", "persam_paper"], 8, sizes=(16, 64))
    assert list(table.index) == [16, 64]
    assert {"step (ms): persam", "step (ms): persam_paper", "peak memory (MB): persam", "peak memory (MB): persam_paper"} == set(table.columns)
    assert (table > 0).all().all()


def test_sections_say_why_they_are_empty(tiny_cohort_dir, tiny_features, pair, tmp_path):
    chapter = setup_chapter(tmp_path, "", tiny_cohort_dir / "manifest.yaml")
    compared, shown = persam_section(chapter, {"persam": pair[1]["persam"]}, tiny_features)
    assert compared is None and isinstance(shown[0], Markdown) and "did not train both" in shown[0].data
    (compared, shown), (variants, shown_ablation) = persam_sections(chapter, {}, tiny_features, tmp_path / "ablation", TrainConfig.of(**TINY))
    assert compared is None and "did not train both" in shown[0].data and len(shown) == 1  # nothing measured without the pair
    assert variants is None and "did not train `persam`" in shown_ablation[0].data
    variants, shown = ablation_section(chapter, {}, tiny_features, tmp_path / "ablation", TrainConfig.of(**TINY))
    assert variants is None and "did not train `persam`" in shown[0].data
    from dataclasses import replace

    without_truth = replace(chapter, truth=None)
    assert "no ground-truth" in ablation_section(without_truth, pair[1], tiny_features, tmp_path / "a", TrainConfig.of(**TINY))[1][0].data


def test_the_ablation_trains_each_variant_on_the_same_folds(tiny_cohort_dir, tiny_features, pair, tmp_path):
    import persam_lib.book.persam_comparison as comparison

    chapter = setup_chapter(tmp_path, "", tiny_cohort_dir / "manifest.yaml")
    variants = {"v1": ("class token reads every token", {"class_token_reads": "all"}), "paper": ("persam_paper, no loss", {"model": "persam_paper", "attention_loss_weight": 0.0, "subbag_size": 8})}
    compared = comparison.ablation(chapter, tiny_features, tmp_path / "ablation", TrainConfig.of(**TINY), pair[1]["persam"], variants)
    assert list(compared.table["variant"]) == ["default", "class token reads every token", "persam_paper, no loss"]
    from persam_lib.train.run import Run

    v1, paper = Run(tmp_path / "ablation" / "v1"), Run(tmp_path / "ablation" / "paper")
    assert v1.config.model_settings.class_token_reads == "all" and v1.folds.equals(pair[1]["persam"].folds)
    assert paper.config.attention_loss_weight == 0.0 and paper.config.label_smoothing == 0.05 and paper.config.subbag_size == 8  # given: kept; the rest from the recipe
    assert isinstance(comparison_table(compared), pd.DataFrame)


def test_every_run_of_the_chapter_trains_in_one_pool_slowest_first_and_is_then_found_done(tiny_cohort_dir, tiny_features, tmp_path, monkeypatch):
    """`train_chapter_runs` trains the comparison's models and the ablation's variants together
    (persam_paper first); `compare_models` and `ablation` then reuse those runs untouched."""
    import persam_lib.book.persam_comparison as comparison
    from persam_lib.train.run import compare_models

    variants = {"v1": ("class token reads every token", {"class_token_reads": "all"}), "paper": ("persam_paper, no loss", {"model": "persam_paper", "attention_loss_weight": 0.0})}
    seen: list[str] = []
    real = comparison.train_variants
    monkeypatch.setattr(comparison, "train_variants", lambda cohort, features, out, configs, **kw: (seen.extend(configs), real(cohort, features, out, configs, **kw))[1])
    chapter = setup_chapter(tmp_path, "", tiny_cohort_dir / "manifest.yaml")
    base = TrainConfig.of(n_folds=2, epochs=2, patience=2, val_fraction=0.25, d_model=16, n_heads=2)
    runs_dir = tmp_path / "runs"
    comparison.train_chapter_runs(chapter, tiny_features, runs_dir, ["abmil", "persam_paper", "persam"], base, variants=variants)
    assert seen[0] == "persam_paper" and seen[1] == "ablation/paper" and set(seen) == {"abmil", "persam_paper", "persam", "ablation/v1", "ablation/paper"}
    stamps = {p: p.stat().st_mtime_ns for p in runs_dir.rglob("checkpoint.pt")}
    assert len(stamps) == 5 * 2  # every run, both folds
    compare_models(chapter.cohort, tiny_features, runs_dir, ["abmil", "persam_paper", "persam"], base, progress=False)
    from persam_lib.train.run import Run

    comparison.ablation(chapter, tiny_features, runs_dir / "ablation", base, Run(runs_dir / "persam"), variants)
    assert {p: p.stat().st_mtime_ns for p in runs_dir.rglob("checkpoint.pt")} == stamps  # found finished, not trained again
