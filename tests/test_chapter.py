"""Chapter set-up and the sections the explanation chapters share: the alteration shown comes from
the ground truth's deciding field, or without ground truth from the field that moves attention
most — on a cohort named unlike the demo as on the demo."""
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import pytest
from matplotlib import pyplot as plt
from test_truth import renamed_cohort_dir

from persam_lib.book.chapter import Chapter, setup_chapter
from persam_lib.book.privacy import Pseudonyms
from persam_lib.book.sections import (
    comparison_figures, example_samples, explanation_results, null_test_section, shift_table, truth_section,
)
from persam_lib.book.workspace import Workspace
from persam_lib.cohort.manifest import load_manifest
from persam_lib.cohort.truth import load_truth
from persam_lib.explain.attention import Explanation
from persam_lib.explain.records import ORIGINAL
from persam_lib.explain.report import example_slides, explanation_report, field_to_show, record_to_show
from persam_lib.features.store import read_features


def _shift(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    """A hand-made `attention_shift` table: (slide, record, jsd); top-k Jaccard falls as JSD grows."""
    table = pd.DataFrame(rows, columns=["slide_id", "record", "jsd"])
    table["field"] = table["record"].str.split("=").str[0]
    table["topk_jaccard"] = 1 - table["jsd"]
    return table


SHIFT = _shift([("s1", "alpha=x", 0.1), ("s2", "alpha=x", 0.1), ("s1", "beta=1", 0.4), ("s2", "beta=2", 0.2), ("s1", "gamma=y", 0.0), ("s2", "gamma=y", 0.0)])


@dataclass(frozen=True)
class Deciding:
    """Only what `field_to_show` reads of a `GroundTruth`."""

    deciding_field: str


def test_without_truth_the_field_that_moves_attention_most_is_shown():
    assert field_to_show(SHIFT) == "beta"  # mean JSD over slides: beta 0.3 > alpha 0.1 > gamma 0
    assert field_to_show(SHIFT, metric="topk_jaccard") == "beta"  # a similarity: least overlap moves most


def test_the_mean_is_over_slides_not_over_records():
    # slide s1 has three small gamma alterations, s2 one large: per record gamma's mean is 0.3, per slide 0.55
    shift = _shift([("s1", "gamma=a", 0.1), ("s1", "gamma=b", 0.1), ("s1", "gamma=c", 0.1), ("s2", "gamma=a", 1.0), ("s1", "beta=1", 0.5), ("s2", "beta=1", 0.5)])
    assert field_to_show(shift) == "gamma"


def test_with_truth_the_deciding_field_is_shown_even_when_another_moves_more():
    assert field_to_show(SHIFT, Deciding("alpha")) == "alpha"
    assert field_to_show(SHIFT, Deciding("delta")) == "beta"  # the deciding field was not altered: fall back to the data
    with pytest.raises(ValueError, match="no altered record"):
        field_to_show(SHIFT.iloc[:0])


def test_the_record_shown_alters_the_field_alone_when_it_can():
    records = [ORIGINAL, "gamma=1", "beta=2;gamma=2", "beta=1"]
    assert record_to_show(records, "beta") == "beta=1"
    assert record_to_show([ORIGINAL, "gamma=1", "beta=2;gamma=2"], "beta") == "beta=2;gamma=2"
    assert record_to_show(records, "delta") == "gamma=1"


def test_setup_chapter_loads_the_cohort_its_truth_and_names(tiny_cohort_dir, tmp_path):
    chapter = setup_chapter(tmp_path, "", tiny_cohort_dir / "manifest.yaml")
    assert chapter.cohort.manifest_path == (tiny_cohort_dir / "manifest.yaml").resolve()
    assert chapter.truth.deciding_field == "site" and chapter.ws.root == tmp_path.resolve()
    slide = chapter.cohort.slides.iloc[0]
    assert chapter.names.slide(slide.slide_id) == "S0001"
    assert chapter.record_label(slide.slide_id) == f"site={chapter.cohort.clinical.loc[slide.patient_id, 'site']}"
    assert chapter.record_label(slide.slide_id, "sex") == f"sex={chapter.cohort.clinical.loc[slide.patient_id, 'sex']}"
    bare = setup_chapter(tmp_path, tmp_path / "out", with_cohort=False)
    assert bare.cohort is None and bare.truth is None and bare.ws.output == (tmp_path / "out").resolve() and bare.record_label("S0001") == ""


def test_setup_chapter_makes_the_demo_only_when_no_manifest_is_given(tiny_cohort_dir, tmp_path):
    made = []

    def make_demo(ws: Workspace):
        made.append(ws.output)
        return tiny_cohort_dir / "manifest.yaml"

    assert setup_chapter(tmp_path, "", "", make_demo=make_demo).cohort is not None and made == [tmp_path.resolve()]
    setup_chapter(tmp_path, "", tiny_cohort_dir / "manifest.yaml", make_demo=make_demo)
    assert len(made) == 1


def _oracle_explanation(cohort, truth, features_dir, noise: str) -> Explanation:
    """Attention on the region diagnostic under each record: flipping the deciding field moves it
    all to the other region, changing ``noise`` moves nothing."""
    deciding, records = truth.deciding_field, cohort.records()
    values = cohort.schema[deciding].values
    patients = cohort.slides.set_index("slide_id")["patient_id"]
    attention, predictions = [], []
    for slide_id in cohort.slides["slide_id"]:
        data = read_features(features_dir / f"{slide_id}.h5")
        fractions = truth.region_fractions(slide_id, data.coords, data.patch_size_level0)
        own = records.loc[patients[slide_id], deciding]
        other = next(v for v in values if v != own)
        for record, value in ((ORIGINAL, own), (f"{noise}=40", own), (f"{deciding}={other}", other)):  # the first alteration is not the one to show
            weights = fractions[truth.region_for(value)] + 1e-3
            attention.append(pd.DataFrame({"slide_id": slide_id, "x": data.coords[:, 0], "y": data.coords[:, 1], "size": data.patch_size_level0, "record": record, "attention": weights / weights.sum()}))
            predictions.append({"slide_id": slide_id, "patient_id": patients[slide_id], "record": record, "y_pred": "A", "prob_A": 0.6, "prob_B": 0.4})
    return Explanation(pd.concat(attention, ignore_index=True), pd.DataFrame(predictions), model="oracle")


@pytest.fixture
def renamed_chapter(cohort_copy, tiny_features, tmp_path):
    cohort = load_manifest(renamed_cohort_dir(cohort_copy) / "manifest.yaml")
    truth = load_truth(cohort)
    return Chapter(Workspace(tmp_path), cohort, truth, Pseudonyms.for_cohort(cohort)), _oracle_explanation(cohort, truth, tiny_features, "age")


def test_sections_of_a_cohort_named_unlike_the_demo(renamed_chapter, tiny_features):
    chapter, explanation = renamed_chapter
    report = explanation_report(explanation, chapter.cohort, chapter.truth)
    reports, explanations = {"oracle": report}, {"oracle": explanation}
    assert field_to_show(report.shift, chapter.truth) == "origin"
    assert field_to_show(report.shift) == "origin"  # without truth: it is also the field that moves attention most
    assert list(shift_table(reports, ["jsd"]).index) == [("oracle", "age"), ("oracle", "origin")]
    [tests] = null_test_section(reports)
    assert tests.loc[("oracle", "origin", "age"), "moves_more"]  # the null: age (a noise field of the truth)
    table, moved = truth_section(reports, chapter.truth)
    assert {"uniform", "random", "oracle"} == set(table.index.get_level_values("attention")) and "origin altered" in set(table.index.get_level_values("record"))
    assert "flipping `origin` raised attention on the newly diagnostic region in 100%" in moved.data
    results = explanation_results(reports)
    assert results["oracle_moved_to_new_region"] == 1.0 and results["oracle_mass_diagnostic"] > 0.5 and set(results) >= {"oracle_jsd_origin", "oracle_jsd_age", "oracle_auroc_diagnostic"}
    assert "oracle_auroc_diagnostic" not in explanation_results(reports, moved_name="moved_to_new_lesion", auroc=False)
    disagreeing = chapter.truth.disagreeing()
    assert 0 < len(disagreeing) < len(chapter.cohort.slides)
    assert example_slides(chapter.cohort, len(chapter.cohort.slides), chapter.truth) == disagreeing  # only where the record decides
    examples = example_samples(chapter, 2, tiny_features)
    assert examples.ids == disagreeing[:2]
    figures = comparison_figures(chapter, examples, explanations, reports)
    titles = [f.get_suptitle() for f in figures]
    panels = [[ax.get_title() for ax in f.axes] for f in figures]
    plt.close("all")
    assert len(figures) == 2 and all("(origin=" in t for t in titles)
    assert all(any(t.startswith("origin=") for t in p) for p in panels)  # the altered panel is the deciding field's flip


def test_without_truth_the_figures_show_the_field_that_moves_attention_most(renamed_chapter, tiny_features):
    chapter, explanation = renamed_chapter
    bare = replace(chapter, truth=None)
    report = explanation_report(explanation, bare.cohort, None)
    assert truth_section({"oracle": report}, None)[0].data == "*This cohort ships no ground-truth regions.*"
    examples = example_samples(bare, 1, tiny_features)
    assert examples.ids == [bare.cohort.slides["slide_id"].iloc[0]] and examples.regions == {examples.ids[0]: None}
    [figure] = comparison_figures(bare, examples, {"oracle": explanation}, {"oracle": report})
    panels = [ax.get_title() for ax in figure.axes]
    plt.close("all")
    assert any(t.startswith("origin=") for t in panels) and not any(t.startswith("age=") for t in panels)
    assert np.isfinite(report.shift["jsd"]).all()


def test_a_library_warning_in_a_chapter_shows_no_machine_path(tmp_path, monkeypatch):
    """The example book once failed its privacy scan: scikit-learn's warning printed the virtual
    environment's absolute path into the training page. A chapter's warnings name files from
    their package (or the working folder) down."""
    import warnings

    from persam_lib.book.chapter import published_location

    setup_chapter(tmp_path, with_cohort=False)
    library = str(tmp_path / ".venv" / "lib" / "python3.11" / "site-packages" / "sklearn" / "metrics" / "_classification.py")
    text = warnings.formatwarning("y_pred contains classes not in y_true", UserWarning, library, 2939)
    assert text == "sklearn/metrics/_classification.py:2939: UserWarning: y_pred contains classes not in y_true\n"
    monkeypatch.chdir(tmp_path)
    assert published_location(str(tmp_path / "persam_lib" / "x.py")) == "persam_lib/x.py"
    assert published_location("/elsewhere/on/the/machine/tool.py") == "tool.py"


def test_balanced_accuracy_is_mean_recall_over_the_classes_present_without_a_warning():
    """A small fold predicts a class its truth lacks: the score is still the mean recall over the
    classes in the truth (scikit-learn's value), and nothing is warned."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    from persam_lib.train.metrics import balanced_accuracy

    y_true, y_pred = np.array([0, 0, 1, 1, 1]), np.array([0, 2, 1, 1, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = balanced_accuracy(y_true, y_pred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ours == pytest.approx(balanced_accuracy_score(y_true, y_pred)) == pytest.approx((0.5 + 2 / 3) / 2)
