"""Every figure the book shows, with one look.

Heatmaps are painted at thumbnail resolution from the cached patch coordinates, so their memory
is bounded by the thumbnail, whatever the slide's size.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

REGION_PALETTE = ("#1f77b4", "#ff7f0e", "#d62728", "#9467bd", "#8c564b", "#e377c2")


def region_colour(index: int) -> str:
    """The outline colour of the ``index``-th region kind (in mask-label order, as
    `GroundTruth.region_masks` gives them, so a kind has one colour in every figure)."""
    return REGION_PALETTE[index % len(REGION_PALETTE)]
ATTENTION_CMAP = "magma"
DIFFERENCE_CMAP = "RdBu_r"


def use_book_style() -> None:
    """The seaborn theme every chapter uses."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")


def paint_patches(shape: tuple[int, int], downsample: float, coords: np.ndarray, size: int, values: np.ndarray) -> np.ndarray:
    """A (h, w) float image at thumbnail resolution with each patch filled by its value (NaN elsewhere).

    Memory is the thumbnail's, whatever the slide's size; the patches are painted by one
    vectorised assignment per pixel offset inside a patch (side² of them), not one per patch.
    Where patches overlap (a stride below the patch size), the later patch wins.
    """
    canvas = np.full(shape, np.nan, dtype=np.float32)
    h, w = shape
    x0 = np.floor(np.asarray(coords)[:, 0] / downsample).astype(np.int64)
    y0 = np.floor(np.asarray(coords)[:, 1] / downsample).astype(np.int64)
    side = max(int(round(size / downsample)), 1)
    values = np.asarray(values, dtype=np.float32)
    for dy in range(side):
        for dx in range(side):
            x, y = x0 + dx, y0 + dy
            inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
            canvas[y[inside], x[inside]] = values[inside]
    return canvas


def slide_overview(thumbnail: np.ndarray, tissue: np.ndarray | None = None, regions: dict[str, np.ndarray] | None = None, ax: Axes | None = None, title: str = "") -> Axes:
    """The thumbnail with the tissue outline (green) and each region's outline in its colour."""
    ax = ax or plt.subplots(figsize=(5, 4))[1]
    ax.imshow(thumbnail)
    h, w = thumbnail.shape[:2]
    if tissue is not None:
        _outline(ax, tissue, (h, w), "#2ca02c", "tissue")
    for i, (name, mask) in enumerate((regions or {}).items()):
        _outline(ax, mask, (h, w), region_colour(i), name)
    ax.set_title(title)
    ax.axis("off")
    return ax


def attention_heatmap(thumbnail: np.ndarray, downsample: float, coords: np.ndarray, size: int, attention: np.ndarray, ax: Axes | None = None, title: str = "", vmax: float | None = None, tissue: np.ndarray | None = None, regions: dict[str, np.ndarray] | None = None) -> Axes:
    """Attention per patch painted over the thumbnail (perceptual colour map), tissue outlined,
    and each ground-truth region outlined in its colour when ``regions`` are given."""
    ax = ax or plt.subplots(figsize=(5, 4))[1]
    canvas = paint_patches(thumbnail.shape[:2], downsample, coords, size, attention)
    ax.imshow(thumbnail)
    image = ax.imshow(canvas, cmap=ATTENTION_CMAP, alpha=0.65, vmin=0, vmax=vmax if vmax is not None else np.nanmax(canvas))
    if tissue is not None:
        _outline(ax, tissue, thumbnail.shape[:2], "#2ca02c", None)
    for i, (name, mask) in enumerate((regions or {}).items()):
        _outline(ax, mask, thumbnail.shape[:2], region_colour(i), name)
    ax.set_title(title)
    ax.axis("off")
    plt.colorbar(image, ax=ax, fraction=0.035, pad=0.02, label="attention")
    return ax


def attention_difference(thumbnail: np.ndarray, downsample: float, coords: np.ndarray, size: int, delta: np.ndarray, ax: Axes | None = None, title: str = "") -> Axes:
    """Altered minus original attention per patch, on a diverging colour map centred at zero."""
    ax = ax or plt.subplots(figsize=(5, 4))[1]
    canvas = paint_patches(thumbnail.shape[:2], downsample, coords, size, delta)
    limit = float(np.nanmax(np.abs(canvas)))
    unchanged = limit < 1e-6  # float noise only: say so rather than stretch noise over the colour map
    limit = max(limit, 1e-6)
    ax.imshow(thumbnail, alpha=0.5)
    image = ax.imshow(canvas * 0.0 if unchanged else canvas, cmap=DIFFERENCE_CMAP, vmin=-limit, vmax=limit, alpha=0.85)
    ax.set_title(f"{title} (no change)" if unchanged else title)
    ax.axis("off")
    plt.colorbar(image, ax=ax, fraction=0.035, pad=0.02, label="Δ attention")
    return ax


def record_comparison(thumbnail: np.ndarray, downsample: float, coords: np.ndarray, size: int, original: np.ndarray, altered: np.ndarray, altered_label: str, regions: dict[str, np.ndarray] | None = None, tissue: np.ndarray | None = None, suptitle: str = "") -> Figure:
    """Three panels: attention under the original record, under the altered one, and their difference."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    vmax = float(max(original.max(), altered.max()))
    panels = list(axes.ravel())
    if not regions:
        panels.pop(0).axis("off")
    if regions:
        slide_overview(thumbnail, tissue, regions, ax=panels.pop(0), title="regions")
    attention_heatmap(thumbnail, downsample, coords, size, original, ax=panels[0], title="original record", vmax=vmax, tissue=tissue)
    attention_heatmap(thumbnail, downsample, coords, size, altered, ax=panels[1], title=altered_label, vmax=vmax, tissue=tissue)
    attention_difference(thumbnail, downsample, coords, size, altered - original, ax=panels[2], title="altered − original")
    fig.suptitle(suptitle)
    return fig


def alteration_grid(
    thumbnail: np.ndarray, downsample: float, coords: np.ndarray, size: int, original: np.ndarray, altered: dict[str, np.ndarray],
    tissue: np.ndarray | None = None, regions: dict[str, np.ndarray] | None = None, columns: int = 4, suptitle: str = "",
) -> Figure:
    """Small multiples over fields: attention under the original record, then the change under
    each altered record (altered − original), all changes on one colour scale so panels compare;
    ground-truth regions outlined in every change panel when given."""
    panels = 1 + len(altered)
    rows = -(-panels // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.7 * rows), constrained_layout=True, squeeze=False)
    flat = list(axes.ravel())
    attention_heatmap(thumbnail, downsample, coords, size, original, ax=flat[0], title="original record", tissue=tissue)
    limit = max([float(np.abs(a - original).max()) for a in altered.values()] + [1e-6])
    for ax, (label, values) in zip(flat[1:], altered.items()):
        canvas = paint_patches(thumbnail.shape[:2], downsample, coords, size, values - original)
        ax.imshow(thumbnail, alpha=0.5)
        image = ax.imshow(canvas, cmap=DIFFERENCE_CMAP, vmin=-limit, vmax=limit, alpha=0.85)
        if tissue is not None:
            _outline(ax, tissue, thumbnail.shape[:2], "#2ca02c", None)
        for i, (name, mask) in enumerate((regions or {}).items()):
            _outline(ax, mask, thumbnail.shape[:2], region_colour(i), None)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    for ax in flat[panels:]:
        ax.axis("off")
    if altered:
        fig.colorbar(image, ax=flat[1:panels], fraction=0.02, pad=0.01, label="Δ attention (altered − original)")
    fig.suptitle(suptitle)
    return fig


def shift_by_field(summary: pd.DataFrame, metric: str = "jsd", ax: Axes | None = None) -> Axes:
    """Mean attention shift per altered field and model with 95% CIs (columns model, field, metric, metric_low, metric_high)."""
    ax = ax or plt.subplots(figsize=(7, 0.5 + 0.35 * summary["field"].nunique() * summary["model"].nunique()))[1]
    models = list(dict.fromkeys(summary["model"]))
    fields = sorted(summary["field"].unique())
    height = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        part = summary[summary["model"] == model].set_index("field").reindex(fields)
        y = np.arange(len(fields)) + i * height
        ax.errorbar(part[metric], y, xerr=[part[metric] - part[f"{metric}_low"], part[f"{metric}_high"] - part[metric]], fmt="o", capsize=3, label=model)
    ax.set_yticks(np.arange(len(fields)) + 0.4 - height / 2, fields)
    ax.set_xlabel(f"{metric.replace('_', ' ')} between original and altered attention (95% CI)")
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="lower right")
    return ax


def shap_beeswarm(shap_values: pd.DataFrame, field_values: pd.DataFrame, ax: Axes | None = None, title: str = "") -> Axes:
    """SHAP values per clinical field, one dot per slide, coloured by the field's value (shap's beeswarm)."""
    import shap

    names = [c for c in shap_values.columns if c != "slide_id"]
    explanation = shap.Explanation(values=shap_values[names].to_numpy(dtype=float), data=field_values[names].to_numpy(dtype=float), feature_names=names)
    ax = ax or plt.subplots(figsize=(7, 0.6 + 0.45 * len(names)))[1]
    shap.plots.beeswarm(explanation, ax=ax, show=False, plot_size=None, color_bar_label="field value (category index / number)")
    ax.set_title(title)
    return ax


def attention_vs_attribution(table: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Per model, the spread over slides of the Spearman correlation between attention and the size of the Integrated Gradients per patch."""
    ax = ax or plt.subplots(figsize=(6, 0.6 + 0.5 * table["model"].nunique()))[1]
    sns.stripplot(data=table, x="ig_attention_spearman", y="model", alpha=0.5, ax=ax)
    sns.pointplot(data=table, x="ig_attention_spearman", y="model", errorbar=("ci", 95), color="k", markers="d", linestyles="none", ax=ax)
    ax.axvline(0, color="grey", ls=":", lw=1)
    ax.set_xlabel("Spearman ρ, attention vs |integrated gradients| per patch (one dot per slide)")
    return ax


def patch_projection_plot(points: pd.DataFrame, explained: float, max_points: int = 6000, ax: Axes | None = None) -> Axes:
    """Patches in two principal components (columns PC1, PC2 and optionally ``patch``, the region
    each lies in, as colour); at most ``max_points`` of them, drawn at random with a fixed seed."""
    sample = points.sample(min(len(points), max_points), random_state=0)
    ax = sns.scatterplot(data=sample, x="PC1", y="PC2", hue="patch" if "patch" in sample else None, s=6, alpha=0.6, linewidth=0, ax=ax)
    ax.set_title(f"{len(points)} patches, {explained:.0%} of the variance in two components")
    return ax


def learning_curves(history: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Training and validation loss per epoch, one line per fold (history from `Run.history`)."""
    ax = ax or plt.subplots(figsize=(7, 3.5))[1]
    long = history.melt(id_vars=["epoch", "fold"], value_vars=["train_loss", "val_loss"], var_name="split", value_name="loss")
    sns.lineplot(data=long, x="epoch", y="loss", hue="split", units="fold", estimator=None, alpha=0.6, ax=ax)
    ax.set_title("learning curves (one line per fold)")
    return ax


def metric_intervals(table: pd.DataFrame, metric: str, ax: Axes | None = None) -> Axes:
    """Point estimate and 95% CI of ``metric`` per model (columns model, metric, metric_low, metric_high)."""
    ax = ax or plt.subplots(figsize=(6, 0.6 + 0.5 * len(table)))[1]
    y = np.arange(len(table))
    ax.errorbar(table[metric], y, xerr=[table[metric] - table[f"{metric}_low"], table[f"{metric}_high"] - table[metric]], fmt="o", capsize=4)
    ax.set_yticks(y, table["model"])
    ax.set_xlabel(f"{metric.replace('_', ' ')} (95% CI)")
    ax.set_xlim(0.4, 1.02)
    ax.axvline(0.5, color="grey", ls=":", lw=1)
    ax.invert_yaxis()  # first model on top, as in the table
    return ax


def _outline(ax: Axes, mask: np.ndarray, shape: tuple[int, int], colour: str, label: str | None) -> None:
    mask = np.asarray(mask, dtype=float)
    if mask.shape != tuple(shape):  # masks may come at another resolution: map onto the thumbnail grid
        yy = (np.arange(shape[0]) * mask.shape[0] / shape[0]).astype(int)
        xx = (np.arange(shape[1]) * mask.shape[1] / shape[1]).astype(int)
        mask = mask[yy][:, xx]
    if mask.any():
        ax.contour(mask, levels=[0.5], colors=[colour], linewidths=1.2)
        if label:
            ax.plot([], [], color=colour, label=label)
            ax.legend(loc="lower right", fontsize=7, framealpha=0.7)


def persam_architecture(ax: Axes | None = None) -> Axes:
    """A diagram of PersAM: patch, clinical-field and class tokens through a Transformer with
    attention in both directions; the class token's attention over patches is the attention map."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    ax = ax or plt.subplots(figsize=(11, 4.2))[1]
    ax.set_xlim(0, 11)
    ax.set_ylim(0, 4.4)
    ax.axis("off")

    def box(x, y, w, h, text, colour, fontsize=9):
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.04", fc=colour, ec="#333333", lw=1))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize)

    def arrow(x0, y0, x1, y1, style="-|>", colour="#333333", ls="-"):
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle=style, mutation_scale=12, color=colour, lw=1.2, ls=ls))

    box(0.1, 3.2, 2.2, 0.8, "whole-slide image\n→ N patches", "#f4cce0")
    box(0.1, 1.9, 2.2, 0.8, "patch encoder\n(features [N, D])", "#f4cce0")
    box(0.1, 0.5, 2.2, 0.9, "clinical record\nage · sex · site · LDH", "#cfe3f5")
    arrow(1.2, 3.2, 1.2, 2.7)
    box(2.9, 1.9, 1.9, 0.8, "linear + LayerNorm\n→ patch tokens", "#f4cce0")
    box(2.9, 0.5, 1.9, 0.9, "one token per field\n(embedding / numeric\nprojection / missing)", "#cfe3f5", 8)
    box(2.9, 3.2, 1.9, 0.8, "class token [CLS]", "#e6e6e6")
    arrow(2.3, 2.3, 2.9, 2.3)
    arrow(2.3, 0.95, 2.9, 0.95)
    box(5.4, 0.5, 2.2, 3.5, "Transformer encoder\n(L layers)\n\nfields attend to every\ntoken, [CLS] to the\nrecord until the last\nlayer; patches attend\nto [CLS], fields and\nthemselves: linear in N", "#fff2cc")
    for y in (3.6, 2.3, 0.95):
        arrow(4.8, y, 5.4, y)
    box(8.2, 2.9, 2.6, 1.1, "CLS attention over\npatches = attention map\n(last layer; per head; rollout)", "#d9ead3")
    box(8.2, 1.4, 2.6, 1.0, "CLS → classifier\n→ subtype", "#d9ead3")
    box(8.2, 0.1, 2.6, 0.9, "change the record →\nthe map changes", "#ffffff", 8)
    arrow(7.6, 3.45, 8.2, 3.45)
    arrow(7.6, 1.9, 8.2, 1.9)
    arrow(9.5, 1.0, 9.5, 1.4, style="-", ls=":")
    ax.set_title("PersAM (Takagi et al., arXiv 2206.03003)", fontsize=11)
    return ax
