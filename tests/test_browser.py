"""The headless-Chromium check of a built book, on tiny synthetic static sites (no Jupyter Book needed).

The Chromium tests skip where no Chromium is installed, unless PERSAM_REQUIRE_BROWSER=1 (CI), where
they run and fail instead.
"""
from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from persam_lib.book.browser import BrowserReport, PageCheck, book_pages, check_book, find_chromium

REQUIRE_BROWSER = os.environ.get("PERSAM_REQUIRE_BROWSER") == "1"
needs_chromium = pytest.mark.skipif(
    find_chromium() is None and not REQUIRE_BROWSER,
    reason="no Chromium on PATH (apt-get install chromium); set PERSAM_REQUIRE_BROWSER=1 to fail instead",
)


# --------------------------------------------------------------------------------------------
# Building synthetic sites


def page(body: str, nav: str = "", title: str = "Page") -> str:
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title></head>
<body>{nav}<main><article>{body}</article></main></body></html>
"""


def png_bytes(size: tuple[int, int] = (64, 64), *, blank: bool = False, seed: int = 0) -> bytes:
    """A PNG of random pixels (or one flat colour when ``blank``)."""
    if blank:
        pixels = np.full((size[1], size[0], 3), 200, dtype=np.uint8)
    else:
        pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


NAV = '<nav class="bd-links"><a href="a.html">A</a><a href="sub/b.html#sec">B</a><a href="search.html">Search</a></nav>'


def write(root: Path, rel: str, text: str | bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())


def make_site(root: Path) -> Path:
    """A good three-page book: index.html (with the sidebar), a.html and sub/b.html, one real figure."""
    write(root, "_images/fig.png", png_bytes((96, 96)))
    # The figure shown large on index.html keeps its screenshot well above 10 kB.
    write(root, "index.html", page(
        '<h1 id="top">Tiny book</h1><p>Welcome to the tiny book.</p>'
        '<img src="_images/fig.png?v=1" width="600" height="600" alt="figure">'
        '<p><a href="#top">top</a> <a href="other.html">not in the nav</a> <a href="https://example.org/">web</a>'
        ' <a href="mailto:x@example.org">mail</a></p>', nav=NAV, title="Index"))
    write(root, "a.html", page(
        f'<h1>A</h1><p>Chapter A.</p><img src="{data_uri(png_bytes((20, 20), seed=1))}" alt="inline">'
        '<p><a href="index.html">home</a> <a href="sub/b.html#sec">to B</a></p>', title="A"))
    write(root, "sub/b.html", page(
        '<h1>B</h1><h2 id="sec">Section</h2><p>Chapter B.</p><img src="../_images/fig.png" alt="figure">'
        '<p><a href="../index.html#top">home</a> <a href="#sec">this section</a> <a href="../a.html">A</a></p>', title="B"))
    write(root, "other.html", page("<p>Reachable, but not from the navigation.</p>"))
    write(root, "search.html", page("<p>Search</p>"))
    write(root, "genindex.html", page("<p>Index</p>"))
    return root


@pytest.fixture
def site(tmp_path) -> Path:
    return make_site(tmp_path / "site")


def problems(report: BrowserReport, name: str) -> list[str]:
    return next(p for p in report.pages if p.page == name).problems


def the_problem(found: list[str], *parts: str) -> str:
    """The one problem that mentions every one of ``parts``."""
    hits = [p for p in found if all(part in p for part in parts)]
    assert len(hits) == 1, (parts, found)
    return hits[0]


# --------------------------------------------------------------------------------------------
# Without Chromium


@needs_chromium
def test_book_pages_follows_the_navigation(site):
    assert book_pages(site) == ["a.html", "index.html", "sub/b.html"]


@needs_chromium
def test_book_pages_follows_redirects_and_nested_navigation(site):
    # Jupyter Book's index.html only redirects to the root page, whose sidebar lists the chapters.
    write(site, "index.html", '<meta http-equiv="Refresh" content="0; url=book/home.html" />')
    write(site, "book/home.html", page("<p>Home</p>", nav=(
        '<nav class="bd-links"><a href="#">Home</a><a href="../a.html">A</a>'
        '<a href="../missing.html">gone</a><a href="https://example.org/x.html">web</a>'
        '<a href="../genindex.html">Index</a></nav>')))
    write(site, "a.html", page("<p>A</p>", nav='<nav><a href="deep/c.html">C</a></nav>'))
    write(site, "deep/c.html", page("<p>C</p>"))
    assert book_pages(site) == ["a.html", "book/home.html", "deep/c.html", "index.html"]


def test_a_book_that_is_not_built_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="persam book"):
        check_book(tmp_path, chromium="/bin/true")


def test_missing_chromium_says_how_to_install_it(site, monkeypatch):
    monkeypatch.setenv("PATH", str(site))  # a PATH with no browser on it
    assert find_chromium() is None
    with pytest.raises(RuntimeError, match=r"apt-get install chromium.*make test"):
        check_book(site)


def test_report_ok_needs_every_page_and_the_screenshot(tmp_path):
    good = [PageCheck("index.html", loaded=True, images=2, problems=[])]
    assert BrowserReport(good, screenshot=None).ok
    assert not BrowserReport([PageCheck("index.html", loaded=False, images=0, problems=[])], screenshot=None).ok
    assert not BrowserReport([PageCheck("index.html", True, 0, ["index.html: x"])], screenshot=None).ok
    assert not BrowserReport(good, screenshot=tmp_path / "missing.png").ok
    (tmp_path / "empty.png").write_bytes(b"")
    assert not BrowserReport(good, screenshot=tmp_path / "empty.png").ok
    (tmp_path / "shot.png").write_bytes(png_bytes((200, 200)))
    report = BrowserReport(good, screenshot=tmp_path / "shot.png")
    assert report.ok
    assert report.line().startswith("browser: 1 page(s) loaded, 2 image(s), 0 problem(s); screenshot ")


# --------------------------------------------------------------------------------------------
# With Chromium


@needs_chromium
def test_a_good_book_passes_and_is_screenshotted(site, tmp_path):
    shot = tmp_path / "shots" / "deeper" / "index.png"
    report = check_book(site, screenshot=shot, timeout=30)
    assert [p.page for p in report.pages] == ["a.html", "index.html", "sub/b.html"]
    assert all(p.loaded for p in report.pages), report.pages
    assert [p.problems for p in report.pages] == [[], [], []]
    assert {p.page: p.images for p in report.pages} == {"a.html": 1, "index.html": 1, "sub/b.html": 1}
    assert report.screenshot == shot and report.screenshot_problem is None
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    assert os.listdir(shot.parent) == ["index.png"]  # no temporary file left behind
    assert report.ok
    assert report.line() == f"browser: 3 page(s) loaded, 3 image(s), 0 problem(s); screenshot {shot}"


@needs_chromium
def test_a_redirecting_index_is_checked_as_the_page_it_shows(site):
    write(site, "index.html", '<meta http-equiv="Refresh" content="0; url=book/home.html" />')
    write(site, "book/home.html", page('<p>Home</p><img src="../_images/fig.png"><a href="../a.html">A</a>'))
    report = check_book(site, pages=["index.html", "book/home.html"], timeout=30)
    assert [(p.page, p.loaded, p.images, p.problems) for p in report.pages] == [
        ("book/home.html", True, 1, []), ("index.html", True, 1, [])]
    write(site, "book/home.html", page('<p>Home</p><img src="../_images/gone.png">'))
    report = check_book(site, pages=["index.html"], timeout=30)
    the_problem(problems(report, "index.html"), "index.html (redirected to book/home.html)", "_images/gone.png does not exist")


@needs_chromium
def test_each_defect_is_reported_on_its_page(site):
    # Independent defects, each on its own element, so one render of each page finds them all.
    broken = site
    write(broken, "_images/blank.png", png_bytes((50, 50), blank=True))
    write(broken, "_images/tiny.png", png_bytes((5, 5)))
    write(broken, "_images/empty.svg", b"")
    write(broken, "_images/ok.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="5" height="5"/></svg>')
    write(broken, "a.html", page(
        '<h1>A</h1><p>Chapter A.</p>'
        '<img src="_images/blank.png"><img src="_images/tiny.png"><img src="http://example.com/fig.png">'
        '<img src="_images/empty.svg"><img src="_images/ok.svg"><img src="data:image/png;base64,@@@">'
        '<p><a href="nowhere.html">gone</a> <a href="sub/b.html#no-such-section">bad anchor</a>'
        ' <a href="sub/b.html#sec">good anchor</a> <a href="#missing-here">bad local anchor</a></p>'))
    write(broken, "sub/b.html", page('<h2 id="sec">S</h2><p>B.</p><img src="../_images/missing.png">'))
    write(broken, "index.html", page("<p>Index</p>", nav=NAV + '<nav><a href="bare.html">bare</a></nav>'))
    write(broken, "bare.html", "<html><body><div>No article here.</div></body></html>")

    report = check_book(broken, pages=book_pages(broken) + ["gone.html"], timeout=30)
    by_page = {p.page: p for p in report.pages}
    assert sorted(by_page) == ["a.html", "bare.html", "gone.html", "index.html", "sub/b.html"]

    a = problems(report, "a.html")
    the_problem(a, "a.html: ", "_images/blank.png", "single colour")
    the_problem(a, "a.html: ", "_images/tiny.png", "5x5")
    the_problem(a, "a.html: ", "http://example.com/fig.png", "internet")
    the_problem(a, "a.html: ", "_images/empty.svg", "empty")
    the_problem(a, "a.html: ", "data:image/png;base64,@@@", "does not decode")
    the_problem(a, "a.html: ", "'nowhere.html'", "does not exist")
    the_problem(a, "a.html: ", "sub/b.html#no-such-section", "no element with id 'no-such-section'")
    the_problem(a, "a.html: ", "#missing-here", "on this page")
    assert len(a) == 8, a  # the good SVG and the good anchor are not reported
    assert by_page["a.html"].loaded and by_page["a.html"].images == 6

    assert problems(report, "sub/b.html") == ["sub/b.html: image '../_images/missing.png': file _images/missing.png does not exist"]
    assert problems(report, "index.html") == []
    assert not by_page["bare.html"].loaded
    the_problem(problems(report, "bare.html"), "bare.html: ", "no <article> or <main>")
    assert not by_page["gone.html"].loaded
    assert problems(report, "gone.html") == ["gone.html: page file does not exist"]
    assert not report.ok
    assert report.line() == "browser: 3 of 5 page(s) loaded, 7 image(s), 11 problem(s)"


@needs_chromium
def test_a_page_that_never_finishes_is_a_timeout_problem(tmp_path):
    write(tmp_path, "index.html", page("<p>Spins.</p><script>while (true) {}</script>"))
    report = check_book(tmp_path, timeout=2)
    assert [(p.loaded, p.problems) for p in report.pages] == [(False, ["index.html: did not render in Chromium: timed out after 2 s"])]
    assert not report.ok
