"""Open the built book in headless Chromium and check what a reader would see and can do.

A Sphinx build can succeed while the book is still broken for a reader: a figure file that was
never copied, a blank (single-colour) plot, a chapter link to a page that is not there, an anchor
that moved, an image fetched from the internet (the book must work offline), a script error, or an
interactive figure whose buttons do nothing. This module drives Debian's Chromium through
Playwright for Python (``executable_path``: Playwright never downloads a browser here), reads each
page's live DOM after its scripts ran, checks its main content, every ``<img>`` and every in-book
link, and clicks every control of the book's interactive "what if" figures
(`persam_lib.book.whatif`), checking that each click shows that control's overlay. It also saves a
screenshot of the landing page, and one of each interactive figure after a click, for a person to
look at.

Everything runs on ``file://`` URLs; any other request is refused before it leaves the browser,
so a page that reaches for the network fails its image check instead of stalling.
"""
from __future__ import annotations

import base64
import binascii
import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_to_bytes, urlsplit

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Every host name fails at once, so an external resource cannot stall a render offline.
    "--host-resolver-rules=MAP * ~NOTFOUND",
)
SCREENSHOT_SIZE = (1280, 2000)
MIN_SCREENSHOT_BYTES = 10_000
MIN_IMAGE_SIDE = 10
NOT_BOOK_PAGES = frozenset({"search.html", "genindex.html"})
IGNORED_LINK_SCHEMES = frozenset({"http", "https", "mailto", "javascript", "tel"})
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PAGES = 1000
MAX_REDIRECTS = 10

# The book's interactive figures (`persam_lib.book.whatif` writes them with these classes).
FIGURE_SELECTOR = ".persam-whatif"
CONTROL_SELECTOR = ".persam-whatif-control"
OVERLAY_SELECTOR = ".persam-whatif-overlay"

# What the checks read from a page's live DOM, in one evaluation.
_SNAPSHOT_JS = """() => {
  const article = document.querySelector('article');
  const main = article || document.querySelector('main');
  const nav = 'nav, .bd-links, .bd-sidebar, .sphinxsidebar, .bd-docs-nav';
  const anchors = [...document.querySelectorAll('a[href]')];
  return {
    has_article: !!article,
    has_main: !!main,
    main_text: !!main && main.innerText.trim().length > 0,
    images: [...document.querySelectorAll('img')].map(i => i.getAttribute('src')),
    links: anchors.map(a => a.getAttribute('href')),
    nav_links: anchors.filter(a => a.closest(nav)).map(a => a.getAttribute('href')),
    ids: [...document.querySelectorAll('[id]')].map(e => e.id)
           .concat([...document.querySelectorAll('a[name]')].map(a => a.getAttribute('name'))),
  };
}"""

# The overlays of one interactive figure a reader sees now: their data-index and src.
_VISIBLE_OVERLAYS_JS = """(figure, selector) => [...figure.querySelectorAll(selector)]
  .filter(img => !img.hidden && img.getClientRects().length > 0 && getComputedStyle(img).visibility !== 'hidden')
  .map(img => ({record: img.dataset.record, src: img.getAttribute('src')}))"""


@dataclass
class PageCheck:
    """What the browser check found on one page of the book."""

    page: str  # path relative to the html dir, e.g. "book/executed/training.html"
    loaded: bool  # Chromium rendered it and the DOM has main content (an <article> or <main> with text)
    images: int  # <img> elements checked
    problems: list[str] = field(default_factory=list)  # each names the page and the image/link/control at fault
    controls: int = 0  # controls of interactive figures clicked
    figure_shots: list[Path] = field(default_factory=list)  # a screenshot of each interactive figure after a click


@dataclass
class BrowserReport:
    """The browser check of a whole book: one :class:`PageCheck` per page, plus the screenshot."""

    pages: list[PageCheck]
    screenshot: Path | None  # where the screenshot was asked to go (None: not asked)
    screenshot_problem: str | None = None  # why the screenshot is missing or unusable

    @property
    def ok(self) -> bool:
        """Every page loaded with no problems, and the screenshot (if asked) is a non-empty PNG."""
        pages_ok = all(p.loaded and not p.problems for p in self.pages)
        return pages_ok and self.screenshot_problem is None and (self.screenshot is None or _is_png(self.screenshot))

    def line(self) -> str:
        """One-line summary, e.g. ``browser: 6 page(s) loaded, 14 image(s), 0 problem(s); screenshot …``."""
        loaded = sum(p.loaded for p in self.pages)
        total = len(self.pages)
        pages = f"{loaded} page(s) loaded" if loaded == total else f"{loaded} of {total} page(s) loaded"
        images = sum(p.images for p in self.pages)
        problems = sum(len(p.problems) for p in self.pages) + (self.screenshot_problem is not None)
        controls = sum(p.controls for p in self.pages)
        text = f"browser: {pages}, {images} image(s)" + (f", {controls} control(s) clicked" if controls else "") + f", {problems} problem(s)"
        if self.screenshot is not None:
            shown = _display_path(self.screenshot)
            text += f"; screenshot FAILED: {self.screenshot_problem}" if self.screenshot_problem else f"; screenshot {shown}"
        return text


@dataclass
class _Snapshot:
    """A page as the browser shows it: the page it finally shows (after redirects) and its DOM facts."""

    shown: str
    dom: dict[str, Any]
    problems: list[str]


# --------------------------------------------------------------------------------------------
# Finding Chromium and driving it


def find_chromium() -> str | None:
    """The first of ``chromium``, ``chromium-browser``, ``google-chrome`` on PATH, else None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


@contextmanager
def book_browser(chromium: str, timeout: float = 60.0) -> Iterator[Any]:
    """A Playwright browser context on ``chromium`` (this executable; never a downloaded one).
    Each tab `_Pages.open` makes lets only ``file:`` requests through."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - the project's environment has it
        raise RuntimeError("browser check: Playwright for Python is not installed; run `make test` (or pip install -r requirements.lock)") from exc
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=list(CHROMIUM_ARGS), headless=True)
        try:
            context = browser.new_context(viewport={"width": SCREENSHOT_SIZE[0], "height": SCREENSHOT_SIZE[1]})
            context.set_default_timeout(timeout * 1000)  # every click, read and screenshot, not only page loads
            yield context
        finally:
            browser.close()


class _Pages:
    """Opens book pages in one browser context, one tab at a time, following meta-refresh
    redirects (Jupyter Book's ``index.html`` only redirects to the root page); each tab lets
    only ``file:`` requests through."""

    def __init__(self, context: Any, root: Path, timeout: float) -> None:
        self.context, self.root, self.timeout = context, root, timeout
        self.ids: dict[str, set[str]] = {}  # page -> ids, of every page rendered so far

    @contextmanager
    def open(self, page: str) -> Iterator[tuple[Any, _Snapshot | str]]:
        """The tab showing ``page`` and its snapshot, or the tab and why it did not render."""
        tab = self.context.new_page()
        tab.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:") else route.abort())
        errors: list[str] = []
        tab.on("pageerror", lambda exc: errors.append(str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__))
        try:
            snap = self._follow(tab, page)
            yield tab, snap
            if isinstance(snap, _Snapshot):
                tab.evaluate("() => new Promise(done => setTimeout(done, 0))")  # the page's queued events reach Playwright
                snap.problems += [f"script error: {e}" for e in dict.fromkeys(errors)]
        finally:
            tab.close()

    def _follow(self, tab: Any, page: str) -> _Snapshot | str:
        """Load the page ``page`` finally shows in ``tab``: its meta refreshes are followed from the
        files, before loading (a page that redirects at once would otherwise navigate under the
        check's feet), then the last page is loaded and read."""
        from playwright.sync_api import Error as PlaywrightError, TimeoutError as PlaywrightTimeout

        shown, problems, seen = page, [], [page]
        while (target_url := _meta_refresh((self.root / shown).read_text(errors="replace"))) is not None:
            target = _local_page(self.root, shown, target_url)
            if target is None:
                problems.append(f"{page}: redirects to {target_url!r}, which is not a page inside the book")
                break
            if target in seen or len(seen) > MAX_REDIRECTS:
                problems.append(f"{page}: redirect loop {' -> '.join(seen + [target])}")
                break
            seen.append(target)
            shown = target
        try:
            tab.goto((self.root / shown).as_uri(), wait_until="load", timeout=self.timeout * 1000)
            dom = tab.evaluate(_SNAPSHOT_JS)
        except PlaywrightTimeout:
            return f"timed out after {self.timeout:g} s"
        except PlaywrightError as exc:
            return str(exc).splitlines()[0][:200]
        self.ids[shown] = self.ids[page] = set(dom["ids"])  # `index.html#x` finds the ids of the page it shows
        return _Snapshot(shown, dom, problems)

    def ids_of(self, page: str) -> set[str]:
        """The ids on ``page`` as rendered (rendered now if no check has yet)."""
        if page not in self.ids:
            with self.open(page) as (_, snap):
                if not isinstance(snap, _Snapshot):
                    self.ids[page] = set()
        return self.ids.get(page, set())


def book_pages(html_dir: Path, chromium: str | None = None, timeout: float = 60.0) -> list[str]:
    """``index.html`` and every page the book's navigation reaches, relative to ``html_dir``; sorted, unique.

    Starting at ``index.html`` it follows meta-refresh redirects and the relative ``<a href>`` links
    inside the rendered navigation (``<nav>`` elements and Sphinx sidebars) that point at existing
    ``.html`` files in ``html_dir``, page after page, so chapters nested below others are found too.
    ``search.html`` and ``genindex.html`` are left out: they are Sphinx's, not the book's.
    """
    root = Path(html_dir).resolve()
    with book_browser(_chromium_or_raise(chromium), timeout) as context:
        return sorted(_crawl(_Pages(context, root, timeout), root, lambda page, tab, snap: None))


def _crawl(pages: _Pages, root: Path, visit) -> list[str]:
    """Every page reachable from ``index.html`` through navigation, each opened once and handed to
    ``visit(page, tab, snapshot-or-reason)`` while its tab is open."""
    found: list[str] = []
    queue = ["index.html"]
    while queue and len(found) < MAX_PAGES:
        page = queue.pop(0)
        if page in found or not (root / page).is_file():
            continue
        found.append(page)
        with pages.open(page) as (tab, snap):
            visit(page, tab, snap)
            if isinstance(snap, _Snapshot):
                targets = [_local_page(root, snap.shown, href) for href in snap.dom["nav_links"]]
                for target in targets + ([snap.shown] if snap.shown != page else []):
                    if target and target not in found and target not in NOT_BOOK_PAGES:
                        queue.append(target)
    return found


# --------------------------------------------------------------------------------------------
# The check


def check_book(html_dir: Path, screenshot: Path | None = None, pages: list[str] | None = None, chromium: str | None = None, timeout: float = 60.0) -> BrowserReport:
    """Render every page of the built book in headless Chromium and check it; optionally screenshot index.html.

    ``pages`` defaults to every page the navigation reaches (:func:`book_pages`). Each page must
    render without a script error and have main content with text; each ``<img>`` must be a local
    (or ``data:``) image that opens, is at least 10x10 pixels and is not a single colour; each
    relative link must reach a file inside ``html_dir`` and, with a ``#fragment`` to an HTML page,
    an element with that id; each control of an interactive figure, clicked, must show its own
    overlay and only it. Problems are collected, not raised. With ``screenshot``, each interactive
    figure is also saved beside it after its first alteration was clicked
    (``whatif-<page path with dashes>-<n>.png``). ``timeout`` bounds each page load, in seconds.

    Raises FileNotFoundError when ``html_dir`` has no ``index.html`` (the book is not built) and
    RuntimeError when no Chromium can be found.
    """
    root = Path(html_dir).resolve()
    if not (root / "index.html").is_file():
        raise FileNotFoundError(f"{html_dir}: no index.html, so the book has not been built; run `persam book` first")
    browser = _chromium_or_raise(chromium)
    shots_dir = Path(screenshot).parent if screenshot is not None else None
    gathered: dict[str, tuple[_Snapshot | str, int, list[str], list[Path]]] = {}

    def visit(page: str, tab: Any, snap: _Snapshot | str) -> None:
        # a redirect stub shows another page of the book, whose own visit clicks its figures
        own_visit_follows = isinstance(snap, _Snapshot) and snap.shown != page and (pages is None or snap.shown in pages)
        if isinstance(snap, _Snapshot) and not own_visit_follows:
            clicked, problems, shots = check_figures(tab, snap.shown, shots_dir)
        else:
            clicked, problems, shots = 0, [], []
        gathered[page] = (snap, clicked, problems, shots)

    with book_browser(browser, timeout) as context:
        opened = _Pages(context, root, timeout)
        if pages is None:
            _crawl(opened, root, visit)
        else:
            for page in dict.fromkeys(pages):
                if not _is_book_file(root, page):
                    gathered[page] = (_missing(root, page), 0, [], [])
                    continue
                with opened.open(page) as (tab, snap):
                    visit(page, tab, snap)
        checks = [_page_check(root, page, *gathered[page], opened) for page in sorted(gathered)]
        shot_problem = take_screenshot(opened, Path(screenshot)) if screenshot is not None else None
    return BrowserReport(pages=checks, screenshot=Path(screenshot) if screenshot is not None else None, screenshot_problem=shot_problem)


def _page_check(root: Path, page: str, snap: _Snapshot | str, clicked: int, figure_problems: list[str], shots: list[Path], opened: _Pages) -> PageCheck:
    """The checks of one rendered page (see :func:`check_book`)."""
    if not isinstance(snap, _Snapshot):
        reason = snap if snap.startswith(f"{page}: ") else f"{page}: did not render in Chromium: {snap}"
        return PageCheck(page, loaded=False, images=0, problems=[reason])
    dom, shown, problems = snap.dom, snap.shown, list(snap.problems)
    loaded = bool(dom["main_text"])
    if not loaded:
        what = "has an empty <article>/<main>" if dom["has_main"] else "has no <article> or <main> element"
        problems.append(f"{page}: rendered page {what} (the main content did not load)")
    problems += [p for src in dom["images"] if (p := _image_problem(root, shown, src))]
    problems += [p for href in dom["links"] if (p := _link_problem(root, shown, href, set(dom["ids"]), opened))]
    problems += figure_problems
    where = page if shown == page else f"{page} (redirected to {shown})"
    named = [p if p.startswith(f"{page}: ") else f"{where}: {p}" for p in problems]
    return PageCheck(page, loaded=loaded, images=len(dom["images"]), problems=list(dict.fromkeys(named)), controls=clicked, figure_shots=shots)


def _is_book_file(root: Path, page: str) -> bool:
    path = _inside(root, root / page)
    return path is not None and path.is_file()


def _missing(root: Path, page: str) -> str:
    if _inside(root, root / page) is None:
        return f"{page}: page is outside the book folder"
    return f"{page}: page file does not exist"


# --------------------------------------------------------------------------------------------
# Interactive figures


def check_figures(tab: Any, page: str, shots_dir: Path | None = None) -> tuple[int, list[str], list[Path]]:
    """Click every control of every interactive figure on the open ``tab``: (controls clicked,
    problems, screenshots saved).

    Each figure shows one overlay at a time. Its controls are clicked from the second to the last,
    then the first, so every click is a change of record: after each, exactly one overlay must be
    visible, it must be the clicked control's record (``data-record`` of both), it must differ from
    the one shown before the click, its image must open, and the control must say it is pressed
    (``aria-pressed``).
    """
    from playwright.sync_api import Error as PlaywrightError

    figures = tab.locator(FIGURE_SELECTOR)
    clicked, problems, shots = 0, [], []
    for k in range(figures.count()):
        try:
            clicked += _check_figure(figures.nth(k), k, page, shots_dir, problems, shots)
        except PlaywrightError as exc:  # a control that cannot be clicked (covered, gone) is a problem of the page, not the end of the check
            problems.append(f"interactive figure {k + 1}: the browser could not work it ({str(exc).splitlines()[0][:200]})")
    return clicked, problems, shots


def _check_figure(figure: Any, k: int, page: str, shots_dir: Path | None, problems: list[str], shots: list[Path]) -> int:
    """`check_figures` for the ``k``-th figure of ``page``: the controls it clicked."""
    clicked = 0
    name = figure.get_attribute("id") or f"figure {k + 1}"
    controls = figure.locator(CONTROL_SELECTOR)
    n = controls.count()
    if n < 2:
        problems.append(f"interactive figure {name!r} has {n} control(s); it needs one per record, two at least")
        return 0
    before = figure.evaluate(_VISIBLE_OVERLAYS_JS, OVERLAY_SELECTOR)
    if len(before) != 1:
        problems.append(f"interactive figure {name!r} shows {len(before)} overlays before any click (one expected)")
    for i in [*range(1, n), 0]:
        control = controls.nth(i)
        label = control.inner_text().strip()
        control.click()
        clicked += 1
        shown = figure.evaluate(_VISIBLE_OVERLAYS_JS, OVERLAY_SELECTOR)
        if len(shown) != 1:
            problems.append(f"interactive figure {name!r}: after clicking {label!r}, {len(shown)} overlays show (one expected)")
        elif shown[0]["record"] != control.get_attribute("data-record"):
            problems.append(f"interactive figure {name!r}: clicking {label!r} shows the overlay of another record ({shown[0]['record']!r})")
        elif before and shown[0]["record"] == before[0]["record"]:
            problems.append(f"interactive figure {name!r}: clicking {label!r} did not change the overlay")
        elif (defect := _data_image_problem(shown[0]["src"]) if (shown[0]["src"] or "").startswith("data:") else None):
            problems.append(f"interactive figure {name!r}: the overlay of {label!r}: {defect}")
        if control.get_attribute("aria-pressed") != "true":
            problems.append(f"interactive figure {name!r}: {label!r} does not show as pressed after its click")
        if i == 1 and shots_dir is not None:
            shots.append(_figure_shot(figure, shots_dir / f"whatif-{_page_slug(page)}-{k + 1}.png"))
        before = shown
    return clicked


def _page_slug(page: str) -> str:
    """A file-name part for a page: ``book/executed/new_patients.html`` → ``book-executed-new_patients``."""
    return Path(page).with_suffix("").as_posix().replace("/", "-")


def _figure_shot(figure: Any, target: Path) -> Path:
    """A screenshot of one figure, written atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.tmp.png")
    figure.screenshot(path=str(tmp))
    os.replace(tmp, target)
    return target


# --------------------------------------------------------------------------------------------
# The screenshot


def take_screenshot(pages: _Pages, target: Path) -> str | None:
    """Save a PNG screenshot of the page ``index.html`` shows at ``target``; None if it worked,
    else what went wrong. Written to a temporary name beside ``target`` and renamed into place, so
    a half-written file never appears at ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tmp.png", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    from playwright.sync_api import Error as PlaywrightError

    try:
        with pages.open("index.html") as (tab, snap):
            if not isinstance(snap, _Snapshot):
                return f"the page did not render ({snap})"
            try:
                tab.screenshot(path=str(tmp))
            except PlaywrightError as exc:
                return f"the browser took no screenshot ({str(exc).splitlines()[0][:200]})"
        problem = _screenshot_problem(tmp)
        os.replace(tmp, target)
        return problem
    finally:
        tmp.unlink(missing_ok=True)


def _chromium_or_raise(chromium: str | None) -> str:
    browser = chromium or find_chromium()
    if browser is None:
        raise RuntimeError(
            "browser check: no Chromium found (looked for chromium, chromium-browser, google-chrome on PATH); "
            "install Debian's `chromium` package (`apt-get install chromium`) or run `make test`, which installs it"
        )
    return browser


# --------------------------------------------------------------------------------------------
# Resolving URLs inside the book


_META_TAG = re.compile(r"<meta\b[^>]*>", re.IGNORECASE)
_ATTRIBUTE = re.compile(r"""([a-zA-Z-]+)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""")


def _meta_refresh(html: str) -> str | None:
    """The URL a page's ``<meta http-equiv="refresh" content="0; url=...">`` sends the reader to, or None."""
    for tag in _META_TAG.findall(html):
        attrs = {m.group(1).lower(): next(g for g in m.groups()[1:] if g is not None) for m in _ATTRIBUTE.finditer(tag)}
        if attrs.get("http-equiv", "").lower() == "refresh":
            return _refresh_url(attrs.get("content", ""))
    return None


def _refresh_url(content: str) -> str | None:
    """The URL in a meta refresh ``content`` such as ``0; url=book/intro.html``."""
    for part in content.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "url" and value.strip():
            return value.strip().strip("'\"")
    return None


def _inside(root: Path, path: Path) -> Path | None:
    """``path`` resolved, if it lies inside ``root``; else None."""
    resolved = path.resolve()
    return resolved if resolved == root or resolved.is_relative_to(root) else None


def _resolve(root: Path, page: str, url_path: str) -> Path | None:
    """The file a relative URL path on ``page`` points at (percent-decoded), or None if outside the book."""
    return _inside(root, (root / page).parent / unquote(url_path))


def _local_page(root: Path, page: str, href: str) -> str | None:
    """The book page (relative to ``root``) a relative link to an existing .html file points at, else None."""
    parts = urlsplit(href)
    if parts.scheme or parts.netloc or not parts.path or parts.path.startswith("/"):
        return None
    target = _resolve(root, page, parts.path)
    if target is None or target.suffix.lower() != ".html" or not target.is_file():
        return None
    return target.relative_to(root).as_posix()


# --------------------------------------------------------------------------------------------
# Images


def _image_problem(root: Path, page: str, src: str | None) -> str | None:
    """What is wrong with one ``<img src>`` on ``page`` (the page the DOM belongs to), or None."""
    if not src:
        return "image <img> has no src"
    if src.startswith("data:"):
        return _data_image_problem(src)
    parts = urlsplit(src)
    if parts.scheme in ("http", "https") or parts.netloc:
        return f"image {src!r} is fetched from the internet (the book must be self-contained)"
    if parts.scheme:
        return f"image {src!r} uses a {parts.scheme}: URL, which will not work for readers of the book"
    if parts.path.startswith("/"):
        return f"image {src!r} is an absolute path, which will not work when the book is opened from disk"
    path = _resolve(root, page, parts.path)
    if path is None:
        return f"image {src!r} points outside the book folder"
    rel = path.relative_to(root).as_posix()
    if not path.is_file():
        return f"image {src!r}: file {rel} does not exist"
    if path.suffix.lower() in (".svg", ".svgz"):
        return None if path.stat().st_size > 0 else f"image {src!r}: SVG file {rel} is empty"
    defect = _pixels_problem(path.read_bytes())
    return f"image {src!r} ({rel}): {defect}" if defect else None


def _data_image_problem(src: str) -> str | None:
    """What is wrong with a ``data:`` image URI, or None."""
    short = src[:40] + "…" if len(src) > 40 else src
    header, comma, payload = src[5:].partition(",")
    if not comma:
        return f"image {short!r}: malformed data: URI (no comma)"
    try:
        if header.lower().endswith(";base64"):
            data = base64.b64decode("".join(unquote(payload).split()), validate=True)
        else:
            data = unquote_to_bytes(payload)
    except (binascii.Error, ValueError) as exc:
        return f"image {short!r}: data: URI does not decode ({exc})"
    if header.split(";")[0].strip().lower() == "image/svg+xml":
        return None if b"<svg" in data else f"image {short!r}: data: URI holds no SVG"
    defect = _pixels_problem(data)
    return f"image {short!r}: {defect}" if defect else None


def _pixels_problem(data: bytes) -> str | None:
    """Why image bytes would not show a figure (unreadable, under 10x10, a single colour), or None.

    Transparent pixels are judged as they look on the page's white background.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            width, height = img.size
            if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
                return f"image is only {width}x{height} pixels (at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} expected)"
            rgba = img.convert("RGBA")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"not a readable image ({type(exc).__name__}: {exc})"
    seen = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    if all(lo == hi for lo, hi in seen.getextrema()):
        return f"image is a single colour {seen.getpixel((0, 0))} (blank figure)"
    return None


def _is_png(path: Path) -> bool:
    """``path`` is a non-empty file that starts with the PNG signature."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
    except OSError:
        return False


def _screenshot_problem(path: Path) -> str | None:
    """Why a screenshot is unusable (not a PNG, 10 kB or less, blank), or None."""
    size = path.stat().st_size
    if not _is_png(path):
        return "screenshot is not a PNG file"
    if size <= MIN_SCREENSHOT_BYTES:
        return f"screenshot is only {size} bytes (a rendered page is more than {MIN_SCREENSHOT_BYTES // 1000} kB)"
    defect = _pixels_problem(path.read_bytes())
    return f"screenshot: {defect}" if defect else None


# --------------------------------------------------------------------------------------------
# Links


def _link_problem(root: Path, page: str, href: str, page_ids: set[str], opened: _Pages) -> str | None:
    """What is wrong with one ``<a href>`` on ``page`` (the page the DOM belongs to), or None.

    External (http, https), mailto:, tel: and javascript: links are not checked. A fragment on
    another page is looked up among the ids of that page as the browser renders it.
    """
    parts = urlsplit(href.strip())
    if parts.scheme.lower() in IGNORED_LINK_SCHEMES or parts.netloc:
        return None
    if parts.scheme:
        return f"link {href!r} uses a {parts.scheme}: URL, which will not work for readers of the book"
    fragment = unquote(parts.fragment)
    if not parts.path:
        if fragment and fragment not in page_ids:
            return f"link {href!r}: no element with id {fragment!r} on this page"
        return None
    if parts.path.startswith("/"):
        return f"link {href!r} is an absolute path, which will not work when the book is opened from disk"
    target = _resolve(root, page, parts.path)
    if target is None:
        return f"link {href!r} points outside the book folder"
    if target.is_dir():
        target = target / "index.html"
    rel = target.relative_to(root).as_posix()
    if not target.is_file():
        return f"link {href!r}: {rel} does not exist"
    if fragment and target.suffix.lower() in (".html", ".htm") and fragment not in opened.ids_of(rel):
        return f"link {href!r}: {rel} has no element with id {fragment!r}"
    return None


def _display_path(path: Path) -> str:
    """``path`` relative to the working directory when it is below it, else as given."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
