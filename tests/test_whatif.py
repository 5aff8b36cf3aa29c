"""The interactive "what if" figure: which records it offers, its HTML, and the browser check that
clicks every control (a static page, no kernel)."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image
from test_browser import needs_chromium, page, write

from persam_lib.book.browser import check_book
from persam_lib.book.whatif import DECIDING, NULL, Overlay, WhatIfFigure, WhatIfSlide, slide_overlays, whatif_records
from persam_lib.explain.records import ORIGINAL

RECORDS = [ORIGINAL, "site=extranodal", "age=40", "age=60", "sex=M", "site=nodal;sex=M"]


def test_the_figure_offers_the_original_the_deciding_field_and_one_null_field():
    assert whatif_records(RECORDS, "site", "sex") == [(ORIGINAL, "original"), ("site=extranodal", DECIDING), ("sex=M", NULL)]
    assert whatif_records(RECORDS, "age", None) == [(ORIGINAL, "original"), ("age=40", DECIDING), ("age=60", DECIDING)]
    assert whatif_records(RECORDS, "age", None, per_field=1) == [(ORIGINAL, "original"), ("age=40", DECIDING)]
    with pytest.raises(ValueError, match="no alteration"):
        whatif_records(RECORDS, "stage", None)
    with pytest.raises(ValueError, match="no original"):
        whatif_records(RECORDS[1:], "site", None)


def _slide(seed: int = 0, title: str = "persam — Slide 01 (site=nodal)") -> WhatIfSlide:
    """A slide whose three records put attention on three different patches."""
    rng = np.random.default_rng(seed)
    thumb = rng.integers(150, 255, (60, 80, 3), dtype=np.uint8)
    coords = np.array([[x, y] for y in range(0, 240, 40) for x in range(0, 320, 40)])
    maps = {record: np.eye(len(coords))[i * 7] + 0.01 for i, record in enumerate([ORIGINAL, "site=extranodal", "sex=M"])}
    chosen = whatif_records(list(maps), "site", "sex")
    return WhatIfSlide(title, slide_overlays(thumb, 4.0, coords, 40, maps, chosen))


def test_each_record_is_its_own_overlay_on_one_colour_scale():
    slide = _slide()
    assert [o.label for o in slide.overlays] == ["original record", "site=extranodal (deciding field)", "sex=M (null field)"]
    pixels = [np.asarray(Image.open(io.BytesIO(o.image)).convert("RGB")) for o in slide.overlays]
    assert all(p.shape == pixels[0].shape for p in pixels)
    assert not np.array_equal(pixels[0], pixels[1]) and not np.array_equal(pixels[1], pixels[2])


def test_the_html_shows_the_original_and_keeps_the_others_hidden_until_clicked():
    html = WhatIfFigure([_slide(), _slide(1, "persam — Slide 02")], "whatif-new").html()
    assert html.count('class="persam-whatif"') == 2 and 'id="whatif-new-1"' in html and 'id="whatif-new-2"' in html
    assert html.count('class="persam-whatif-control"') == 6 and html.count('aria-pressed="true">') == 2
    assert html.count("<img ") == 6 and html.count(" hidden>") == 4
    first = html.split('src="data:image/jpeg;base64,')[1].split('"')[0]
    assert Image.open(io.BytesIO(base64.b64decode(first))).size[0] > 100
    script = html.split("<script>")[1]
    assert "http://" not in script and "https://" not in script and "fetch(" not in script  # nothing fetched
    with pytest.raises(ValueError):
        WhatIfFigure([])


def _figure_site(root, figure_html: str):
    write(root, "index.html", page("<h1>What if</h1><p>The figure.</p>" + figure_html))
    return root


@needs_chromium
def test_the_browser_check_clicks_every_control_and_sees_each_overlay(tmp_path):
    site = _figure_site(tmp_path / "site", WhatIfFigure([_slide(), _slide(1, "Slide 02")], "whatif").html())
    report = check_book(site, screenshot=tmp_path / "shots" / "index.png", timeout=30)
    (checked,) = report.pages
    assert checked.problems == [] and report.ok, checked.problems
    assert checked.controls == 6  # three buttons on each of two slides, every one clicked
    assert report.line().startswith("browser: 1 page(s) loaded, 6 image(s), 6 control(s) clicked, 0 problem(s)")
    assert [p.name for p in checked.figure_shots] == ["whatif-index-1.png", "whatif-index-2.png"]

    # a redirecting index: the figures are clicked once, on the page it shows, and an anchor to the stub resolves
    write(site, "book/fig.html", page('<h1 id="top">What if</h1><p><a href="../index.html#top">top</a></p>' + WhatIfFigure([_slide()], "w").html()))
    write(site, "index.html", '<meta http-equiv="Refresh" content="0; url=book/fig.html" />')
    report = check_book(site, screenshot=tmp_path / "shots2" / "index.png", timeout=30)
    assert [(p.page, p.controls, p.problems) for p in report.pages] == [("book/fig.html", 3, []), ("index.html", 0, [])]
    assert [p.name for p in report.pages[0].figure_shots] == ["whatif-book-fig-1.png"]
    shot = Image.open(checked.figure_shots[0])
    assert shot.size[0] > 300 and len(np.unique(np.asarray(shot.convert("L")))) > 10  # the figure, drawn


@needs_chromium
def test_a_figure_whose_controls_do_nothing_or_show_the_wrong_overlay_fails(tmp_path):
    working = WhatIfFigure([_slide()], "whatif").html()
    dead = working.split("<script>")[0]  # no script: the buttons do nothing
    report = check_book(_figure_site(tmp_path / "dead", dead), timeout=30)
    problems = report.pages[0].problems
    assert not report.ok and any("did not change the overlay" in p for p in problems), problems
    assert any("does not show as pressed" in p for p in problems)

    img = '<img class="persam-whatif-overlay" data-index='
    swapped = working.replace(f'{img}"1"', f'{img}"X"').replace(f'{img}"2"', f'{img}"1"').replace(f'{img}"X"', f'{img}"2"')  # buttons and overlays out of step
    report = check_book(_figure_site(tmp_path / "swapped", swapped), timeout=30)
    problems = report.pages[0].problems
    assert any("shows the overlay of another record" in p for p in problems), problems

    lonely = WhatIfFigure([WhatIfSlide("one", [_slide().overlays[0]])]).html()
    report = check_book(_figure_site(tmp_path / "lonely", lonely), timeout=30)
    assert any("needs one per record" in p for p in report.pages[0].problems)


@needs_chromium
def test_a_script_error_on_a_page_is_a_problem(tmp_path):
    """Jupyter Book once declared sphinx-thebe's `const THEBE_JS_URL` twice on every page."""
    twice = "<script>const THEBE_JS_URL = 1;</script>"
    report = check_book(_figure_site(tmp_path / "site", twice * 2), timeout=30)
    assert report.pages[0].problems == ["index.html: script error: Identifier 'THEBE_JS_URL' has already been declared"]


def test_each_script_of_a_page_is_kept_once():
    from sphinx.builders.html._assets import _JavaScript

    from persam_lib.book.sphinx_scripts import one_of_each

    body = "const THEBE_JS_URL = 'x'"
    scripts = [_JavaScript("_static/a.js", priority=200), _JavaScript(None, body=body), _JavaScript("_static/a.js", priority=500), _JavaScript("", body=body), _JavaScript("", body="other")]
    kept = one_of_each(scripts)
    assert [(s.filename, s.attributes.get("body")) for s in kept] == [("_static/a.js", None), (None, body), ("", "other")]
