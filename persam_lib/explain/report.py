"""Everything `persam explain --metrics/--figures` and the book's attention chapter show, from one explanation.

`explanation_report` turns an `Explanation` into tables: attention shift per slide and per field
(with CIs), the null test, and — for cohorts with ground truth — where attention falls against
the region that is diagnostic under each record, beside uniform and random attention.
`write_metrics` saves them as one JSON file; `write_figures` draws heatmaps and small multiples.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from persam_lib.io.atomic import atomic_path, dumps_strict, write_text_atomic
from persam_lib.cohort.manifest import Cohort
from persam_lib.cohort.truth import GroundTruth
from persam_lib.explain.attention import Explanation
from persam_lib.explain.records import ORIGINAL, field_of
from persam_lib.explain.shift import attention_shift
from persam_lib.explain.summary import moved_summary, moved_to_new_region, null_comparison, summarise_shift, summarise_truth
from persam_lib.explain.truth_scores import truth_scores_of, with_baselines

MAP_NAMES = {"attention": "last layer", "attention_rollout": "rollout"}


def null_fields_of(cohort: Cohort, truth: GroundTruth | None = None, extra: list[str] | None = None) -> list[str]:
    """Fields a model should ignore: the manifest's negative controls, the ground truth's noise fields and ``extra``."""
    names = list(cohort.schema.negative_controls) + list(truth.noise_fields if truth else []) + list(extra or [])
    unknown = [n for n in names if n not in cohort.schema.names]
    if unknown:
        raise ValueError(f"null field(s) {unknown} are not fields of the cohort; fields are {cohort.schema.names}")
    return list(dict.fromkeys(names))


@dataclass
class ExplanationReport:
    """The tables of one model's explanation (see the module docstring)."""

    model: str
    shift: pd.DataFrame  # per slide × altered record, last-layer map: jsd, topk_jaccard, mass_moved, prob_change, prediction_flipped
    shift_summary: pd.DataFrame  # per map × field, with CIs
    null_tests: pd.DataFrame  # per map × field × null field
    truth: pd.DataFrame | None = None  # per source (map or baseline) × record group: mass and AUROC with CIs
    truth_scores: pd.DataFrame | None = None  # per slide × record, last-layer map
    moved: dict = field(default_factory=dict)  # share of slides whose attention moved to the newly diagnostic region

    def tables(self) -> dict[str, pd.DataFrame]:
        out = {"shift_summary": self.shift_summary, "null_tests": self.null_tests, "shift_per_slide": self.shift}
        if self.truth is not None:
            out["truth"] = self.truth
        return out


def explanation_report(explanation: Explanation, cohort: Cohort, truth: GroundTruth | None = None, null_fields: list[str] | None = None) -> ExplanationReport:
    """Shift, null tests and ground-truth scores for every attention map of ``explanation``."""
    att = explanation.attention
    # rollout only where it differs: for one attention step (ABMIL, concat, ...) it is the same map
    maps = ["attention"] + (["attention_rollout"] if "attention_rollout" in att and not np.allclose(att["attention"], att["attention_rollout"], atol=1e-7) else [])
    shifts = {m: attention_shift(explanation.attention, explanation.predictions, column=m) for m in maps}
    nulls = null_fields if null_fields is not None else null_fields_of(cohort, truth)
    shift_summary = pd.concat([summarise_shift(s).assign(map=MAP_NAMES[m]) for m, s in shifts.items()], ignore_index=True)
    null_tests = pd.concat([null_comparison(s, nulls).assign(map=MAP_NAMES[m]) for m, s in shifts.items()], ignore_index=True)
    report = ExplanationReport(explanation.model, shifts["attention"], shift_summary, null_tests)
    if truth is not None:
        with_base = with_baselines(explanation.attention)
        label = {m: f"{explanation.model} ({MAP_NAMES[m]})" if len(maps) > 1 else explanation.model for m in maps}
        by_column = truth_scores_of(with_base, cohort, truth, [*maps, "uniform", "random"])  # masks read once per slide
        scores = {label.get(column, column): table for column, table in by_column.items()}
        report.truth = summarise_truth(scores, truth.deciding_field)
        report.truth_scores = scores[label["attention"]]
        moved = moved_to_new_region(report.truth_scores, truth.deciding_field)
        if len(moved):
            report.moved = moved_summary(moved)
    return report


def check_metrics_path(path: str | Path) -> Path:
    """``path`` if it names a .json file, else a ValueError."""
    path = Path(path)
    if path.suffix != ".json":
        raise ValueError(f"{path}: the metrics file must end in .json")
    return path


def write_metrics(reports: list[ExplanationReport], path: str | Path) -> Path:
    """All tables of ``reports`` as one JSON file: ``{model: {table: [rows...]}, ...}`` (written atomically)."""
    path = check_metrics_path(path)

    payload = {r.model: {**{name: table.to_dict("records") for name, table in r.tables().items()}, "moved_to_new_region": r.moved} for r in reports}
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, dumps_strict(payload, indent=1, default=_json_default))  # strict JSON: NaN and Inf as null


def _json_default(value):
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def example_slides(cohort: Cohort, n: int, truth: GroundTruth | None = None) -> list[str]:
    """Slides worth showing: with ground truth, those whose regions disagree (there the record
    decides); otherwise, or when none disagree, the cohort's first ``n``."""
    chosen = truth.disagreeing() if truth is not None else []
    return chosen[:n] if chosen else cohort.slides["slide_id"].head(n).tolist()


def field_to_show(shift: pd.DataFrame, truth: GroundTruth | None = None, metric: str = "jsd") -> str:
    """The altered field a figure shows: the ground truth's deciding field when it was altered;
    otherwise (no ground truth) the field whose alteration moves attention most — the largest mean
    over slides of each slide's mean ``metric`` (`attention_shift`'s table), as `summarise_shift`
    averages it. Never a field chosen by name."""
    fields = shift["field"].unique()
    if len(fields) == 0:
        raise ValueError("no altered record in the shift table: nothing to show")
    if truth is not None and truth.deciding_field in fields:
        return truth.deciding_field
    per_field = shift.groupby(["field", "slide_id"], sort=True)[metric].mean().groupby(level="field").mean()
    if metric == "topk_jaccard":  # a similarity: the field that moves attention most keeps the least overlap
        return str(per_field.idxmin())
    return str(per_field.idxmax())


def record_to_show(records: list[str], field: str) -> str:
    """Of a slide's ``records``, the first that alters ``field`` alone, else the first that alters
    it with others, else the first altered record."""
    altered = [r for r in records if r != ORIGINAL]
    if not altered:
        raise ValueError("no altered record to show")
    alone = [r for r in altered if field_of(r) == field]
    together = [r for r in altered if field in field_of(r).split(";")]
    return (alone or together or altered)[0]


def slide_maps(explanation: Explanation, slide_id: str, column: str = "attention") -> tuple[np.ndarray, int, dict[str, np.ndarray]]:
    """A slide's patch coordinates (N, 2), patch size and its map under every record, in one patch order."""
    part = explanation.attention[explanation.attention["slide_id"] == slide_id]
    if part.empty:
        raise ValueError(f"slide '{slide_id}' is not in the explanation")
    maps = {record: rows.sort_values(["y", "x"])[column].to_numpy() for record, rows in part.groupby("record", sort=False)}
    first = part[part["record"] == ORIGINAL].sort_values(["y", "x"])
    return first[["x", "y"]].to_numpy(), int(first["size"].iloc[0]), maps


def sample_background(cohort: Cohort, slide_id: str, features_dir: str | Path | None) -> tuple[np.ndarray, float, np.ndarray | None]:
    """What a heatmap is drawn over: an RGB thumbnail (H, W, 3) uint8, its downsample from the
    sample's pixels, and the tissue mask where there is one (slides whose features we extracted;
    None for imported features, which come without one, and for 2-D images, whose whole patch grid
    is attended)."""
    row = cohort.sample_rows()[slide_id]
    if cohort.modality == "images":
        from persam_lib.images import read_image
        from persam_lib.train.data import image_window

        pixels = read_image(row["path"], image_window(cohort, row))
        step = max(1, int(np.ceil(max(pixels.shape[:2]) / 1024)))  # a large radiograph is drawn at <= 1024 pixels a side
        rgb = pixels[::step, ::step]
        rgb = np.repeat(rgb, 3, axis=-1) if rgb.shape[-1] == 1 else rgb
        return (rgb * 255).round().astype(np.uint8), float(step), None
    from persam_lib.features.products import load_tissue_mask, mask_path
    from persam_lib.slides.factory import open_slide

    with open_slide(row["path"]) as slide:
        thumb, downsample = slide.thumbnail(16)
    tissue = load_tissue_mask(features_dir, slide_id)[0] if features_dir is not None and mask_path(features_dir, slide_id).is_file() else None
    return thumb, downsample, tissue


def write_figures(explanation: Explanation, cohort: Cohort, features_dir: str | Path | None, out_dir: str | Path, slides: list[str], truth: GroundTruth | None = None) -> list[Path]:
    """For each slide: original vs altered heatmaps with the regions and the difference (the
    alteration of `field_to_show`: the deciding field, or without ground truth the field that moves
    attention most), and small multiples over every alteration. PNG files, each written
    atomically; returns their paths."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from persam_lib.plots.figures import alteration_grid, record_comparison, use_book_style

    use_book_style()
    shown_field = field_to_show(attention_shift(explanation.attention, explanation.predictions), truth) if explanation.attention["record"].ne(ORIGINAL).any() else ""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for slide_id in slides:
        coords, size, maps = slide_maps(explanation, slide_id)
        thumb, downsample, tissue = sample_background(cohort, slide_id, features_dir)
        regions = truth.region_masks(slide_id) if truth is not None else None
        altered = {k: v for k, v in maps.items() if k != ORIGINAL}
        if not altered:
            continue
        shown = record_to_show(list(maps), shown_field)
        title = f"{explanation.model} — {slide_id}"
        figures = {
            f"{explanation.model}_{slide_id}_comparison.png": record_comparison(thumb, downsample, coords, size, maps[ORIGINAL], altered[shown], shown, regions=regions, tissue=tissue, suptitle=title),
            f"{explanation.model}_{slide_id}_fields.png": alteration_grid(thumb, downsample, coords, size, maps[ORIGINAL], altered, tissue=tissue, regions=regions, suptitle=title),
        }
        for name, fig in figures.items():
            with atomic_path(out_dir / name) as tmp:
                fig.savefig(tmp, format="png", dpi=110)
            plt.close(fig)
            written.append(out_dir / name)
    return written
