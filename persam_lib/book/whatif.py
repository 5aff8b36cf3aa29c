"""The book's interactive "what if" figure: a slide's attention under each record, one button each.

For a few example slides the figure shows the thumbnail with the attention overlay and one button
per record: the original, each alteration of the deciding field (the ground truth's, or without
ground truth the field that moves attention most) and one alteration of a field the model should
ignore (a null field). A button shows that record's overlay in place of the last. The page needs no
kernel: every overlay is an image inside the page (a ``data:`` URI) and a few lines of plain
JavaScript switch between them, so the figure works in the published book opened from disk.

All overlays of one slide share one colour scale, so a reader sees attention move, not a colour
map rescaled. The browser check (`persam_lib.book.browser.check_figures`) clicks every button of
every such figure and checks that each shows its own overlay: buttons and overlays both carry
their record (``data-record``), the script switches by position (``data-index``). The class names
the check looks for are the constants below.
"""
from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib import pyplot as plt

from persam_lib.explain.records import ORIGINAL, field_of
from persam_lib.plots.figures import attention_heatmap

if TYPE_CHECKING:  # the chapter's types, for the signature only (sections imports much of the library)
    from persam_lib.book.chapter import Chapter
    from persam_lib.book.sections import Examples
    from persam_lib.explain.attention import Explanation

FIGURE_CLASS = "persam-whatif"
CONTROL_CLASS = "persam-whatif-control"
OVERLAY_CLASS = "persam-whatif-overlay"
SHOWN_CLASS = "persam-whatif-shown"
DECIDING, NULL = "deciding field", "null field"

_SCRIPT = """<script>
(function () {
  document.querySelectorAll('.%(figure)s:not([data-ready])').forEach(function (figure) {
    figure.setAttribute('data-ready', '1');
    var controls = figure.querySelectorAll('.%(control)s');
    controls.forEach(function (control) {
      control.addEventListener('click', function () {
        figure.querySelectorAll('.%(overlay)s').forEach(function (img) { img.hidden = img.dataset.index !== control.dataset.index; });
        controls.forEach(function (other) { other.setAttribute('aria-pressed', String(other === control)); });
        figure.querySelector('.%(shown)s').textContent = control.dataset.label;
      });
    });
  });
})();
</script>""" % {"figure": FIGURE_CLASS, "control": CONTROL_CLASS, "overlay": OVERLAY_CLASS, "shown": SHOWN_CLASS}

_STYLE = f"""<style>
.{FIGURE_CLASS} {{ margin: 1em 0 2em; }}
.{FIGURE_CLASS} .{CONTROL_CLASS} {{ margin: 0 .4em .4em 0; padding: .2em .7em; border: 1px solid #888; border-radius: .3em; background: #fff; cursor: pointer; font-size: .9em; }}
.{FIGURE_CLASS} .{CONTROL_CLASS}[aria-pressed="true"] {{ background: #2c3e50; color: #fff; border-color: #2c3e50; }}
.{FIGURE_CLASS} img.{OVERLAY_CLASS} {{ max-width: 100%; display: block; }}
.{FIGURE_CLASS} img.{OVERLAY_CLASS}[hidden] {{ display: none; }}
</style>"""


@dataclass(frozen=True)
class Overlay:
    """One record's attention over a slide: the record, what it is (original, deciding field,
    null field) and the rendered image (JPEG bytes: a heatmap over tissue is photographic, and a
    PNG of it would be four times larger in the page)."""

    record: str
    kind: str
    image: bytes

    @property
    def label(self) -> str:
        """The button's text: ``original record``, ``site=extranodal (deciding field)``, …"""
        return "original record" if self.record == ORIGINAL else f"{self.record} ({self.kind})"


@dataclass(frozen=True)
class WhatIfSlide:
    """One slide of the figure: its title (a pseudonym and its record) and its overlays, the
    original's first."""

    title: str
    overlays: list[Overlay]


def whatif_records(records: list[str], deciding: str | None, null: str | None, per_field: int = 4) -> list[tuple[str, str]]:
    """Which of a slide's ``records`` the figure offers, as (record, kind): the original, then up to
    ``per_field`` alterations of the ``deciding`` field alone, then the first alteration of the
    ``null`` field alone. Raises ValueError when there is no original or nothing to switch to."""
    if ORIGINAL not in records:
        raise ValueError("the explanation has no original record for this slide")
    chosen = [(ORIGINAL, "original")]
    chosen += [(r, DECIDING) for r in records if r != ORIGINAL and deciding and field_of(r) == deciding][:per_field]
    chosen += [(r, NULL) for r in records if r != ORIGINAL and null and field_of(r) == null][:1]
    if len(chosen) < 2:
        raise ValueError(f"no alteration of the deciding field ({deciding}) or of a null field ({null}) among the records: {records}")
    return chosen


def overlay_image(thumbnail: np.ndarray, downsample: float, coords: np.ndarray, size: int, values: np.ndarray, vmax: float,
                regions: dict[str, np.ndarray] | None = None, tissue: np.ndarray | None = None, dpi: int = 80) -> bytes:
    """The attention ``values`` painted over the thumbnail on the colour scale [0, ``vmax``], ground-
    truth regions outlined, as JPEG bytes."""
    fig, ax = plt.subplots(figsize=(6, 4.4), constrained_layout=True)
    try:
        attention_heatmap(thumbnail, downsample, coords, size, values, ax=ax, vmax=vmax, tissue=tissue, regions=regions)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="jpeg", dpi=dpi, pil_kwargs={"quality": 85})
    finally:
        plt.close(fig)
    return buffer.getvalue()


def slide_overlays(thumbnail: np.ndarray, downsample: float, coords: np.ndarray, size: int, maps: dict[str, np.ndarray], chosen: list[tuple[str, str]],
                   regions: dict[str, np.ndarray] | None = None, tissue: np.ndarray | None = None) -> list[Overlay]:
    """The overlays of the ``chosen`` records (`whatif_records`), on one colour scale: the largest
    attention of any of them."""
    vmax = max(float(np.max(maps[record])) for record, _ in chosen)
    return [Overlay(record, kind, overlay_image(thumbnail, downsample, coords, size, maps[record], vmax, regions, tissue)) for record, kind in chosen]


class WhatIfFigure:
    """The figure as HTML: shown as such by Jupyter (``_repr_html_``) and so in the built book."""

    def __init__(self, slides: list[WhatIfSlide], figure_id: str = "whatif") -> None:
        if not slides:
            raise ValueError("a what-if figure needs one slide at least")
        self.slides, self.figure_id = slides, _safe_id(figure_id)

    def html(self) -> str:
        """Style, one block per slide (title, buttons, overlays; the original shown), and the script."""
        return _STYLE + "".join(self._slide_html(k, slide) for k, slide in enumerate(self.slides)) + _SCRIPT

    def _repr_html_(self) -> str:
        return self.html()

    def _slide_html(self, k: int, slide: WhatIfSlide) -> str:
        buttons, images = [], []
        for i, overlay in enumerate(slide.overlays):
            label, record = html.escape(overlay.label), html.escape(overlay.record)
            buttons.append(f'<button type="button" class="{CONTROL_CLASS}" data-index="{i}" data-record="{record}" data-label="{label}" aria-pressed="{str(i == 0).lower()}">{label}</button>')
            uri = "data:image/jpeg;base64," + base64.b64encode(overlay.image).decode("ascii")
            hidden = "" if i == 0 else " hidden"
            images.append(f'<img class="{OVERLAY_CLASS}" data-index="{i}" data-record="{record}" src="{uri}" alt="attention under {label}"{hidden}>')
        return (f'<div class="{FIGURE_CLASS}" id="{self.figure_id}-{k + 1}">'
                f'<p><strong>{html.escape(slide.title)}</strong> — attention under: <span class="{SHOWN_CLASS}">{html.escape(slide.overlays[0].label)}</span></p>'
                f'<div role="group" aria-label="record">{"".join(buttons)}</div>{"".join(images)}</div>')


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", text) or "whatif"


def whatif_figure(chapter: Chapter, examples: Examples, explanation: Explanation, shift: pd.DataFrame, figure_id: str = "whatif") -> WhatIfFigure:
    """The figure for a chapter's example slides (`persam_lib.book.sections.Examples`) from one
    model's ``explanation`` and its attention-shift table: the deciding field is `field_to_show`'s
    (the ground truth's, else the field that moves attention most), the null field the first of
    `null_fields_of` the cohort that was altered; slides are named by their pseudonyms."""
    from persam_lib.explain.report import field_to_show, null_fields_of, slide_maps

    deciding = field_to_show(shift, chapter.truth)
    altered = set(shift["field"])
    null = next((f for f in null_fields_of(chapter.cohort, chapter.truth) if f in altered and f != deciding), None)
    slides = []
    for sample in examples.ids:
        thumb, downsample, tissue = examples.backgrounds[sample]
        coords, size, maps = slide_maps(explanation, sample)
        chosen = whatif_records(list(maps), deciding, null)
        label = chapter.record_label(sample, deciding)
        title = f"{explanation.model} — {chapter.names.slide(sample)}" + (f" ({label})" if label else "")
        slides.append(WhatIfSlide(title, slide_overlays(thumb, downsample, coords, size, maps, chosen, examples.regions[sample], tissue)))
    return WhatIfFigure(slides, figure_id)
