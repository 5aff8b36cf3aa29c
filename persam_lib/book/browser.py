"""Open the built book in headless Chromium and check what a reader would see.

A Sphinx build can succeed while the book is still broken for a reader: a figure file that was
never copied, a blank (single-colour) plot, a chapter link to a page that is not there, an anchor
that moved, or an image fetched from the internet (the book must work offline). This module renders
every page of the book with Chromium (``--dump-dom``), parses the rendered DOM with the standard
library and checks the page's main content, every ``<img>`` and every in-book link. It can also
save a screenshot of the landing page so a person can look at it.

Everything runs on ``file://`` URLs; Chromium is started with flags that keep it off the network
(this machine has none, and without them Chromium waits on network look-ups).
"""
from __future__ import annotations

import base64
import binascii
import io
import os
import shutil
import signal
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, unquote_to_bytes, urlsplit

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Every host name fails at once, so an external resource cannot stall a render offline.
    "--host-resolver-rules=MAP * ~NOTFOUND",
    # Let scripts and <meta http-equiv="refresh"> redirects (Jupyter Book's index.html) settle;
    # virtual time runs faster than the clock, so this costs little.
    "--virtual-time-budget=2000",
)
SCREENSHOT_SIZE = "1280,2000"
MIN_SCREENSHOT_BYTES = 10_000
MIN_IMAGE_SIDE = 10
NOT_BOOK_PAGES = frozenset({"search.html", "genindex.html"})
IGNORED_LINK_SCHEMES = frozenset({"http", "https", "mailto", "javascript", "tel"})
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PARALLEL_RENDERS = 4
MAX_PAGES = 1000


@dataclass
class PageCheck:
    """What the browser check found on one page of the book."""

    page: str  # path relative to the html dir, e.g. "book/executed/training.html"
    loaded: bool  # Chromium rendered it and the DOM has main content (an <article> or <main> with text)
    images: int  # <img> elements checked
    problems: list[str] = field(default_factory=list)  # each names the page and the image/link at fault


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
        text = f"browser: {pages}, {images} image(s), {problems} problem(s)"
        if self.screenshot is not None:
            shown = _display_path(self.screenshot)
            text += f"; screenshot FAILED: {self.screenshot_problem}" if self.screenshot_problem else f"; screenshot {shown}"
        return text


# --------------------------------------------------------------------------------------------
# Finding Chromium and the pages


def find_chromium() -> str | None:
    """The first of ``chromium``, ``chromium-browser``, ``google-chrome`` on PATH, else None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def book_pages(html_dir: Path) -> list[str]:
    """``index.html`` and every page the book's navigation reaches, relative to ``html_dir``; sorted, unique.

    Starting at ``index.html`` it follows ``<meta http-equiv="refresh">`` redirects (Jupyter Book's
    ``index.html`` only redirects to the root page) and the relative ``<a href>`` links inside the
    navigation (``<nav>`` elements and Sphinx sidebars) that point at existing ``.html`` files in
    ``html_dir``, page after page, so chapters nested below others are found too. ``search.html`` and
    ``genindex.html`` are left out: they are Sphinx's, not the book's. Links to missing pages are not
    listed here; the link check of the page that holds them reports them.
    """
    root = Path(html_dir).resolve()
    found: set[str] = set()
    queue = ["index.html"]
    while queue and len(found) < MAX_PAGES:
        page = queue.pop()
        if page in found or not (root / page).is_file():
            continue
        found.add(page)
        parsed = _parse_html((root / page).read_text(errors="replace"))
        targets = parsed.nav_links + ([parsed.refresh] if parsed.refresh else [])
        for href in targets:
            target = _local_page(root, page, href)
            if target and target not in found and target not in NOT_BOOK_PAGES:
                queue.append(target)
    return sorted(found)


# --------------------------------------------------------------------------------------------
# The check


def check_book(html_dir: Path, screenshot: Path | None = None, pages: list[str] | None = None, chromium: str | None = None, timeout: float = 60.0) -> BrowserReport:
    """Render every page of the built book in headless Chromium and check it; optionally screenshot index.html.

    ``pages`` defaults to :func:`book_pages`. Each page must render and have main content with text;
    each ``<img>`` must be a local (or ``data:``) image that opens, is at least 10x10 pixels and is not
    a single colour; each relative link must reach a file inside ``html_dir`` and, with a ``#fragment``
    to an HTML page, an element with that id. Problems are collected, not raised. ``timeout`` bounds
    each Chromium call, in seconds.

    Raises FileNotFoundError when ``html_dir`` has no ``index.html`` (the book is not built) and
    RuntimeError when no Chromium can be found.
    """
    root = Path(html_dir).resolve()
    if not (root / "index.html").is_file():
        raise FileNotFoundError(f"{html_dir}: no index.html, so the book has not been built; run `persam book` first")
    browser = chromium or find_chromium()
    if browser is None:
        raise RuntimeError(
            "browser check: no Chromium found (looked for chromium, chromium-browser, google-chrome on PATH); "
            "install Debian's `chromium` package (`apt-get install chromium`) or run `make test`, which installs it"
        )
    names = sorted(dict.fromkeys(pages)) if pages is not None else book_pages(root)
    with ThreadPoolExecutor(max_workers=MAX_PARALLEL_RENDERS) as pool:
        shot = pool.submit(take_screenshot, browser, root / "index.html", Path(screenshot), timeout) if screenshot is not None else None
        checks = list(pool.map(lambda name: check_page(root, name, browser, timeout), names))
        shot_problem = shot.result() if shot is not None else None
    return BrowserReport(pages=checks, screenshot=Path(screenshot) if screenshot is not None else None, screenshot_problem=shot_problem)


def check_page(root: Path, page: str, chromium: str, timeout: float) -> PageCheck:
    """Render one page and check its main content, images and links (see :func:`check_book`)."""
    path = _inside(root, root / page)
    if path is None:
        return PageCheck(page, loaded=False, images=0, problems=[f"{page}: page is outside the book folder"])
    if not path.is_file():
        return PageCheck(page, loaded=False, images=0, problems=[f"{page}: page file does not exist"])
    # A redirect stub (Jupyter Book's index.html) shows the page it redirects to; links and images
    # in the rendered DOM are relative to that page.
    shown, problems = _redirect_target(root, page)
    dom, error = render_dom(chromium, path, timeout)
    if error:
        return PageCheck(page, loaded=False, images=0, problems=problems + [f"{page}: did not render in Chromium: {error}"])
    parsed = _parse_html(dom)
    loaded = parsed.has_main_text
    if not loaded:
        what = "has an empty <article>/<main>" if parsed.has_main else "has no <article> or <main> element"
        problems.append(f"{page}: rendered page {what} (the main content did not load)")
    problems += [p for src in parsed.images if (p := _image_problem(root, shown, src))]
    ids_cache: dict[Path, set[str]] = {}
    problems += [p for href in parsed.links if (p := _link_problem(root, shown, href, parsed.ids, ids_cache))]
    where = page if shown == page else f"{page} (redirected to {shown})"
    named = [p if p.startswith(f"{page}: ") else f"{where}: {p}" for p in problems]
    return PageCheck(page, loaded=loaded, images=len(parsed.images), problems=list(dict.fromkeys(named)))


# --------------------------------------------------------------------------------------------
# Running Chromium


def render_dom(chromium: str, page: Path, timeout: float) -> tuple[str, str | None]:
    """The DOM Chromium renders for a local file, and None; or ``("", reason)`` if it failed."""
    rc, out, err = _run_chromium(chromium, ["--dump-dom", page.as_uri()], timeout)
    if rc is None:
        return "", f"timed out after {timeout:g} s"
    if rc != 0:
        return "", f"Chromium exited with {rc}: {_last_line(err)}"
    dom = out.decode("utf-8", errors="replace")
    if not dom.strip():
        return "", f"Chromium printed no DOM ({_last_line(err) or 'no message'})"
    return dom, None


def take_screenshot(chromium: str, page: Path, target: Path, timeout: float) -> str | None:
    """Save a PNG screenshot of ``page`` at ``target``; None if it worked, else what went wrong.

    Chromium writes to a temporary name beside ``target`` that is renamed into place once complete,
    so a half-written file never appears at ``target``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tmp.png", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        tmp.unlink()  # Chromium must create it: an empty leftover would look like a result
        rc, _, err = _run_chromium(chromium, [f"--screenshot={tmp}", f"--window-size={SCREENSHOT_SIZE}", "--hide-scrollbars", page.as_uri()], timeout)
        if rc is None:
            return f"Chromium timed out after {timeout:g} s"
        if rc != 0 or not tmp.is_file():
            return f"Chromium wrote no screenshot (exit {rc}: {_last_line(err) or 'no message'})"
        problem = _screenshot_problem(tmp)
        os.replace(tmp, target)
        return problem
    finally:
        tmp.unlink(missing_ok=True)


def _run_chromium(chromium: str, args: list[str], timeout: float) -> tuple[int | None, bytes, bytes]:
    """Run Chromium with the offline flags and a fresh profile; return code (None on timeout), stdout, stderr.

    Chromium starts helper processes; it runs in its own process group so a timeout ends them all.
    """
    with tempfile.TemporaryDirectory(prefix="persam-chromium-") as profile:
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
            return proc.returncode, out, err
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            return None, out, err


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the process group this module started for ``proc`` (Chromium and its helpers)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _last_line(stderr: bytes) -> str:
    """The last stderr line that is not D-Bus noise (Chromium complains about D-Bus in containers)."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", errors="replace").splitlines() if ln.strip() and "dbus" not in ln.lower()]
    return lines[-1][:300] if lines else ""


# --------------------------------------------------------------------------------------------
# Parsing HTML


class _PageParser(HTMLParser):
    """Collects what the checks need from one HTML document, in one pass."""

    _SKIP_TEXT = frozenset({"script", "style", "noscript", "template"})
    _SIDEBAR_CLASSES = ("bd-links", "bd-sidebar", "sphinxsidebar", "bd-docs-nav")

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[str | None] = []  # src of each <img>, None when it has none
        self.links: list[str] = []  # href of each <a>
        self.nav_links: list[str] = []  # href of each <a> inside navigation
        self.ids: set[str] = set()
        self.refresh: str | None = None  # URL of a <meta http-equiv="refresh">
        self.has_main = False
        self.has_article = False
        self._article_text = False
        self._main_text = False
        self._open: list[tuple[str, bool]] = []  # open elements: (tag, starts navigation)
        self._depth = {"article": 0, "main": 0, "nav": 0, "skip": 0}

    @property
    def has_main_text(self) -> bool:
        """The main content has text: the <article> if there is one, else the <main>."""
        return self._article_text if self.has_article else self._main_text

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        if tag == "img":
            self.images.append(a.get("src") or None)
        elif tag == "meta" and a.get("http-equiv", "").lower() == "refresh":
            self.refresh = _refresh_url(a.get("content", ""))
        elif tag == "a" and "href" in a:
            self.links.append(a["href"])
            if self._depth["nav"]:
                self.nav_links.append(a["href"])
        if tag in _VOID_TAGS:
            return
        is_nav = tag == "nav" or any(c in self._SIDEBAR_CLASSES for c in a.get("class", "").split())
        self._open.append((tag, is_nav))
        self._count(tag, is_nav, +1)
        self.has_article |= tag == "article"
        self.has_main |= tag in ("article", "main")

    def handle_endtag(self, tag: str) -> None:
        # Close up to the matching open element (HTML lets some end tags be left out);
        # an end tag with no open element is ignored.
        if tag in _VOID_TAGS or all(t != tag for t, _ in self._open):
            return
        while self._open:
            open_tag, is_nav = self._open.pop()
            self._count(open_tag, is_nav, -1)
            if open_tag == tag:
                return

    def _count(self, tag: str, is_nav: bool, step: int) -> None:
        if tag in ("article", "main"):
            self._depth[tag] += step
        self._depth["nav"] += step * is_nav
        self._depth["skip"] += step * (tag in self._SKIP_TEXT)

    def handle_data(self, data: str) -> None:
        if self._depth["skip"] or not data.strip():
            return
        self._article_text |= self._depth["article"] > 0
        self._main_text |= self._depth["main"] > 0


_VOID_TAGS = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"})


def _parse_html(text: str) -> _PageParser:
    parser = _PageParser()
    parser.feed(text)
    parser.close()
    return parser


def _refresh_url(content: str) -> str | None:
    """The URL in a meta refresh ``content`` such as ``0; url=book/intro.html``."""
    for part in content.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "url" and value.strip():
            return value.strip().strip("'\"")
    return None


def _ids_of(path: Path, cache: dict[Path, set[str]]) -> set[str]:
    """The ids (and <a name>s) in the raw HTML of ``path``, parsed once per check."""
    if path not in cache:
        cache[path] = _parse_html(path.read_text(errors="replace")).ids
    return cache[path]


# --------------------------------------------------------------------------------------------
# Resolving URLs inside the book


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


def _redirect_target(root: Path, page: str) -> tuple[str, list[str]]:
    """The page that ``page`` finally shows after meta-refresh redirects, and any problems on the way."""
    seen = [page]
    current = page
    while True:
        refresh = _parse_html((root / current).read_text(errors="replace")).refresh
        if not refresh:
            return current, []
        target = _local_page(root, current, refresh)
        if target is None:
            return current, [f"{page}: redirects to {refresh!r}, which is not a page inside the book"]
        if target in seen:
            return current, [f"{page}: redirect loop {' -> '.join(seen + [target])}"]
        seen.append(target)
        current = target


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


def _link_problem(root: Path, page: str, href: str, page_ids: set[str], cache: dict[Path, set[str]]) -> str | None:
    """What is wrong with one ``<a href>`` on ``page`` (the page the DOM belongs to), or None.

    External (http, https), mailto:, tel: and javascript: links are not checked.
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
    if fragment and target.suffix.lower() in (".html", ".htm") and fragment not in _ids_of(target, cache):
        return f"link {href!r}: {rel} has no element with id {fragment!r}"
    return None


def _display_path(path: Path) -> str:
    """``path`` relative to the working directory when it is below it, else as given."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
