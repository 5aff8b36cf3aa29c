"""A Sphinx extension for the book's HTML: each script once per page.

Jupyter Book 1.x with Sphinx 7+ puts some extensions' inline scripts on every page twice (the
registry's copy and the builder's, which differ only in priority). For ``sphinx-thebe`` that is a
``const THEBE_JS_URL`` declared twice, so every page of the book threw a script error in the
browser. This extension keeps the first of scripts that are the same file or the same inline
body; ``_config.yml`` loads it through ``sphinx.extra_extensions``.
"""
from __future__ import annotations

from typing import Any


def script_key(script: Any) -> tuple:
    """What makes two of a page's scripts the same: file name and attributes (an inline script's
    body is one), whatever their priority; an inline script's missing file name is None in one
    copy and "" in the other."""
    attributes = getattr(script, "attributes", {}) or {}
    return (str(getattr(script, "filename", script) or ""), tuple(sorted((k, str(v)) for k, v in attributes.items() if k != "priority")))


def one_of_each(scripts: list[Any]) -> list[Any]:
    """``scripts`` in their order, without the second and later copies of any one."""
    seen: set[tuple] = set()
    kept = []
    for script in scripts:
        key = script_key(script)
        if key not in seen:
            seen.add(key)
            kept.append(script)
    return kept


def _page_context(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    if context.get("script_files"):
        context["script_files"] = one_of_each(list(context["script_files"]))


def setup(app: Any) -> dict:
    app.connect("html-page-context", _page_context, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
