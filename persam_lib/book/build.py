"""Build the book: execute every notebook with papermill, then compile with Jupyter Book.

`book/notebooks.yaml` says which notebook runs with which parameters. A notebook that fails
is reported by name (with papermill's message) while the others still run; the build then goes
on so the reader sees how far it got, and the command exits non-zero. Beside every executed
notebook goes its record (``<name>.results.json``: results, provenance, parameters). After the
HTML is built, the privacy scan reads it for real ids and identifying values (a leak fails the
build), and, where Chromium is installed, the browser check opens it and saves a screenshot.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persam_lib.io.yaml_files import load_yaml

from persam_lib.book.parameters import declared_parameters, type_problem
from persam_lib.book.privacy import scan_for_paths
from persam_lib.book.results import write_sidecar
from persam_lib.book.workspace import Workspace


@dataclass(frozen=True)
class NotebookSpec:
    """One entry of ``book/notebooks.yaml``."""

    name: str
    source: Path
    parameters: dict[str, Any] = field(default_factory=dict)
    needs: str = ""  # on your cohort (``manifest`` set), the parameter this chapter needs, else it is left out
    because: str = ""  # why it needs it, for the message
    after: tuple[str, ...] = ()  # the chapters it runs after (it reads what they made): `read_notebook_specs` fills it

    def left_out_because(self, overrides: dict[str, Any]) -> str:
        """Why this chapter does not belong in a book built with ``overrides`` ("" = it does): a
        chapter about a cohort of its own (the demo radiographs, the demo's new patients) in a
        book on the user's own cohort (``manifest``) without the parameter it ``needs`` would show
        the demo's, which have nothing to do with that cohort."""
        if self.needs and overrides.get("manifest") and not overrides.get(self.needs):
            return f"{self.because or 'it needs a cohort of its own'} (give one with --set {self.needs}=...)"
        return ""

    @property
    def image_cohort(self) -> bool:
        """Whether the chapter runs on 2-D images (it needs ``image_manifest`` on your cohort)."""
        return self.needs == "image_manifest"


@dataclass
class BookReport:
    """What a book build did."""

    executed: dict[str, float] = field(default_factory=dict)  # name -> seconds
    failed: dict[str, str] = field(default_factory=dict)  # name -> reason
    left_out: dict[str, str] = field(default_factory=dict)  # name -> why the chapter is not in this book
    build_returncode: int | None = None
    leaks: list[str] = field(default_factory=list)  # privacy-scan findings
    browser: str = ""  # the browser check's summary line, when it ran
    browser_ok: bool = True
    stages: dict[str, float] = field(default_factory=dict)  # after the chapters: "html", "privacy scan", "browser check" -> seconds
    chapters_s: float | None = None  # wall-clock seconds of executing the chapters (less than their sum when some ran at once)

    def times(self) -> dict[str, Any]:
        """Each chapter's and stage's seconds, the chapters' wall-clock time (``chapters_s``;
        chapters that run at once overlap) and the total: what `make_book` records in
        ``_build/book_times.json`` and prints, so a slow chapter is found without a profiler."""
        chapters = self.chapters_s if self.chapters_s is not None else sum(self.executed.values())
        return {"chapters": {k: round(v, 1) for k, v in self.executed.items()}, "stages": {k: round(v, 1) for k, v in self.stages.items()},
                "chapters_s": round(chapters, 1), "total_s": round(chapters + sum(self.stages.values()), 1)}

    @property
    def ok(self) -> bool:
        return not self.failed and self.build_returncode == 0 and not self.leaks and self.browser_ok

    def line(self) -> str:
        parts = [f"{len(self.executed)} notebook(s) executed", f"{len(self.failed)} failed"]
        if self.failed:
            parts[-1] += f" ({', '.join(self.failed)})"
        if self.left_out:
            parts.append(f"{len(self.left_out)} left out ({', '.join(self.left_out)})")
        parts.append("book built" if self.build_returncode == 0 else "book build FAILED" if self.build_returncode is not None else "book not built")
        if self.leaks:
            parts.append(f"PRIVACY SCAN FAILED ({len(self.leaks)} leak(s))")
        return "book: " + ", ".join(parts)


def read_notebook_specs(project_root: str | Path) -> list[NotebookSpec]:
    """Parse ``book/notebooks.yaml``; names the file and entry on any mistake."""
    root = Path(project_root)
    path = root / "book" / "notebooks.yaml"
    raw = load_yaml(path, "book notebook list") or {}
    specs = []
    for i, entry in enumerate(raw.get("notebooks", [])):
        for key in ("name", "source"):
            if key not in entry:
                raise ValueError(f"{path}: notebook entry {i + 1} has no '{key}'")
        source = root / entry["source"]
        if not source.is_file():
            raise ValueError(f"{path}: notebook entry {i + 1} ('{entry['name']}'): {source} does not exist")
        own = entry.get("on_your_cohort") or {}
        earlier = tuple(spec.name for spec in specs)
        after = entry.get("after", list(earlier))
        if not isinstance(after, list) or any(name not in earlier for name in after):
            raise ValueError(f"{path}: notebook entry {i + 1} ('{entry['name']}'): 'after' must list chapters above it ({', '.join(earlier) or 'none'}); got {after!r}")
        specs.append(NotebookSpec(str(entry["name"]), source, dict(entry.get("parameters") or {}), str(own.get("needs", "")), str(own.get("because", "")), tuple(str(a) for a in after)))
    return specs


def execute_notebooks(project_root: str | Path, work_dir: str | Path, overrides: dict[str, Any] | None = None, *, only: list[str] | None = None, jobs: int = 1) -> BookReport:
    """Execute the book's notebooks into ``book/executed/``; failures are collected, not raised.

    ``overrides`` are given to every notebook that declares the parameter (others ignore them).
    Up to ``jobs`` notebooks run at once: a notebook starts when the chapters it runs ``after``
    have finished (`read_notebook_specs`: by default every chapter above it, so the order of
    ``book/notebooks.yaml`` holds unless an entry says otherwise), the first such in that order
    first. With several at once each kernel gets the cores' share of threads (`_kernel_threads`),
    so two chapters computing at once do not fight over the same cores. A failed chapter counts
    as finished: the chapters after it run, and fail on their own if they needed what it made.
    """
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    if jobs < 1:
        raise ValueError(f"jobs must be an int >= 1, got {jobs!r}")
    root = Path(project_root).resolve()
    specs = read_notebook_specs(root)
    declared = {spec.name: declared_parameters(spec.source) for spec in specs}  # each notebook read once
    check_overrides(declared, overrides or {})
    out_dir = root / "book" / "executed"
    out_dir.mkdir(parents=True, exist_ok=True)
    report = BookReport()
    todo = []
    for spec in specs:
        if only and spec.name not in only:
            continue
        reason = spec.left_out_because(overrides or {})
        if reason:
            report.left_out[spec.name] = reason
            for stale in (out_dir / f"{spec.name}.ipynb", out_dir / f"{spec.name}.results.json"):  # a previous build's copy must not be published
                stale.unlink(missing_ok=True)
            _say(f"{spec.name} left out: {reason}")
            continue
        todo.append(spec)
    waiting_on = {spec.name for spec in todo}  # chapters not run in this build are not waited for
    start = time.perf_counter()
    with _kernel_threads(jobs), ThreadPoolExecutor(max_workers=jobs) as pool:
        running: dict[Any, str] = {}
        while todo or running:
            for spec in [s for s in todo if not waiting_on.intersection(s.after)][: jobs - len(running)]:
                todo.remove(spec)
                running[pool.submit(_execute_one, spec, root, out_dir, work_dir, overrides or {}, declared[spec.name])] = spec.name
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                seconds, error = future.result()
                if error:
                    report.failed[name] = error
                else:
                    report.executed[name] = seconds
                waiting_on.discard(name)
    report.chapters_s = time.perf_counter() - start
    return report


def _execute_one(spec: NotebookSpec, root: Path, out_dir: Path, work_dir: str | Path, overrides: dict[str, Any], declared: set[str]) -> tuple[float, str]:
    """Execute one notebook into ``out_dir/<name>.ipynb`` (atomically; a failed one is kept, so the
    book shows the error) with its record beside it. Returns (seconds, "" or why it failed)."""
    import papermill as pm

    parameters = {**spec.parameters, "work_dir": str(Path(work_dir).resolve()), **{k: v for k, v in overrides.items() if k in declared}}
    parameters = {k: seen_from(root, v) if k in PATH_PARAMETERS else v for k, v in parameters.items()}
    target = out_dir / f"{spec.name}.ipynb"
    tmp = out_dir / f".{spec.name}.running.ipynb"
    start = time.perf_counter()
    _say(f"executing {spec.source.relative_to(root)} -> {target.relative_to(root)}")
    error = ""
    try:
        pm.execute_notebook(str(spec.source), str(tmp), parameters=parameters, kernel_name="python3", cwd=str(root), progress_bar=False, log_output=False)
        os.replace(tmp, target)
        _say(f"{spec.name} done in {time.perf_counter() - start:.0f} s")
    except Exception as err:  # papermill raises PapermillExecutionError with the failing cell
        error = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
        if tmp.exists():
            os.replace(tmp, target)  # keep the partly executed notebook: the book shows the error
        _say(f"FAILED {spec.name}: {error}")
    seconds = time.perf_counter() - start
    if target.exists():
        relative_papermill_paths(target, root)
        write_sidecar(target)
    return seconds, error


def _say(message: str) -> None:
    """One line of the build's log, written whole (chapters running at once do not interleave it)."""
    sys.stdout.write(f"[persam book] {message}\n")
    sys.stdout.flush()


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@contextmanager
def _kernel_threads(jobs: int):
    """While ``jobs`` > 1 notebooks run at once, the kernels started meanwhile get
    ``cores // jobs`` threads each (OpenMP and MKL, which torch and numpy read when they start),
    unless the user set them: threads that outnumber the cores spin-wait on each other. The
    variables are restored afterwards."""
    if jobs <= 1 or any(name in os.environ for name in THREAD_VARIABLES):
        yield
        return
    share = str(max(1, (os.cpu_count() or 1) // jobs))
    os.environ.update({name: share for name in THREAD_VARIABLES})
    try:
        yield
    finally:
        for name in THREAD_VARIABLES:
            os.environ.pop(name, None)


def relative_papermill_paths(notebook: Path, root: Path) -> None:
    """Papermill records the absolute input and output paths in the executed notebook's metadata,
    which the book publishes: keep them relative to the project root (and name the output as the
    executed copy, not the temporary file it was written to)."""
    import json

    data = json.loads(notebook.read_text())
    meta = data.get("metadata", {}).get("papermill")
    if not isinstance(meta, dict):
        return
    for key, value in (("input_path", meta.get("input_path")), ("output_path", str(notebook))):
        if value:
            meta[key] = seen_from(root, value)
    notebook.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


PATH_PARAMETERS = ("work_dir", "output_dir", "manifest", "image_manifest", "features_dir", "new_manifest", "new_features")  # given to notebooks relative to the project root


def seen_from(root: Path, value: Any) -> Any:
    """A path parameter as the notebook gets it: relative to the project root, where notebooks run,
    so no page (nor the notebook copies the book publishes) shows the machine's absolute paths."""
    if not isinstance(value, (str, Path)) or not str(value):
        return value
    return os.path.relpath(Path(value).resolve(), root)


def build_html(project_root: str | Path, *, strict: bool = False, left_out: tuple[str, ...] = ()) -> int:
    """Run ``jupyter-book build`` on the project root (``-W -n --keep-going`` when ``strict``); the
    chapters ``left_out`` (by name) are dropped from a copy of the table of contents it builds from."""
    root = Path(project_root).resolve()
    jb = Path(sys.executable).with_name("jupyter-book")
    command = [str(jb) if jb.exists() else "jupyter-book", "build", str(root)]
    if left_out:
        command += ["--toc", str(toc_without(root, left_out))]
    if strict:
        command += ["-W", "-n", "--keep-going"]
    return subprocess.call(command, cwd=root)


def toc_without(root: Path, names: tuple[str, ...]) -> Path:
    """A copy of ``_toc.yml`` (in ``_build/``) without the executed chapters ``names``."""
    import yaml

    toc = load_yaml(root / "_toc.yml", "table of contents") or {}
    dropped = {f"book/executed/{name}" for name in names}
    toc["chapters"] = [entry for entry in toc.get("chapters", []) if entry.get("file") not in dropped]
    path = root / "_build" / "_toc.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(toc, sort_keys=False))
    return path


def check_overrides(declared: dict[str, dict[str, Any]], overrides: dict[str, Any]) -> None:
    """Every override must be a parameter of some notebook (``declared``: notebook → its parameters
    with defaults), of its type; else a ValueError before anything runs."""
    problems = []
    for name, value in overrides.items():
        defaults = [parameters[name] for parameters in declared.values() if name in parameters]
        if not defaults:
            known = sorted({p for parameters in declared.values() for p in parameters})
            problems.append(f"no notebook of the book has a parameter '{name}'; parameters are {known}")
        problems += [p for p in {type_problem(name, value, d) for d in defaults} if p]
    if problems:
        raise ValueError("; ".join(problems))


def book_cohort_manifests(work_dir: str | Path, overrides: dict[str, Any] | None = None) -> list[Path]:
    """The manifests the book was computed on: the slide cohort (the ``manifest`` parameter, or the
    demo cohort), the image cohort (the ``image_manifest`` parameter, or the demo radiographs
    when the radiograph chapter generated them) and the new patients (``new_manifest``, or the
    demo's second cohort when the new patients chapter generated it)."""
    overrides, workspace = overrides or {}, Workspace.of(work_dir)
    slides = workspace.manifest(overrides.get("manifest") or "")
    found = [slides]
    for name, made in (("image_manifest", workspace.radiograph_manifest), ("new_manifest", workspace.new_patients_dir / "cohort" / "manifest.yaml")):
        given = Path(overrides[name]).resolve() if overrides.get(name) else made
        if given.is_file() or overrides.get(name):
            found.append(given)
    return found


def privacy_scan(html_dir: str | Path, manifests: Path | list[Path]) -> list[str]:
    """The privacy scan of a built book against every cohort it shows; findings as lines (empty: clean)."""
    from persam_lib.book.privacy import scan_for_leaks
    from persam_lib.cohort.manifest import load_manifest

    found = []
    for manifest in [manifests] if isinstance(manifests, Path) else manifests:
        if not manifest.is_file():
            found.append(f"{manifest}: the cohort's manifest is missing, so the book cannot be checked for leaks")
            continue
        leaks, short = scan_for_leaks(html_dir, load_manifest(manifest, check_files=False))
        if short:
            _say(f"privacy scan: {len(short)} id(s)/value(s) of {manifest} shorter than 4 characters cannot be told from ordinary text and were not scanned")
        found += [str(leak) for leak in leaks]
    return list(dict.fromkeys(found))  # a value shared by two cohorts is one finding


def machine_paths(root: Path, work_dir: str | Path, overrides: dict[str, Any] | None = None) -> list[Path]:
    """The absolute folders a published page must never show: the project, the work folder, the
    folders of the cohort's inputs (manifest, features), the Python environment when it is a
    virtual environment (a library's warning prints its file's path) and the user's home (when it
    is ``/home/<user>``-like)."""
    home = Path.home()
    found = [root, Path(work_dir).resolve()] + ([home] if len(home.parts) >= 3 else [])  # /home/<user> names the user; a bare /root or /app would match ordinary text
    if sys.prefix != sys.base_prefix:
        found.append(Path(sys.prefix).resolve())
    for name in ("manifest", "image_manifest", "features_dir", "new_manifest", "new_features"):
        value = (overrides or {}).get(name)
        if value:
            path = Path(value).resolve()
            found.append(path.parent if path.suffix else path)
    return list(dict.fromkeys(found))


def make_book(project_root: str | Path, work_dir: str | Path, overrides: dict[str, Any] | None = None, *, strict: bool = False, browser_check: bool = True, jobs: int = 2) -> BookReport:
    """Execute all notebooks (up to ``jobs`` at once, `execute_notebooks`), build the HTML book
    into ``_build/html``, scan it for leaks and, where Chromium is installed (and
    ``browser_check``), open it in a browser and save a screenshot."""
    from persam_lib.io.atomic import write_json_atomic

    root = Path(project_root).resolve()
    report = execute_notebooks(root, work_dir, overrides, jobs=jobs)
    start = time.perf_counter()
    report.build_returncode = build_html(root, strict=strict, left_out=tuple(report.left_out))
    report.stages["html"] = time.perf_counter() - start
    html = root / "_build" / "html"
    if report.build_returncode == 0:
        start = time.perf_counter()
        report.leaks = privacy_scan(html, book_cohort_manifests(work_dir, overrides)) + [str(leak) for leak in scan_for_paths(html, machine_paths(root, work_dir, overrides))]
        report.stages["privacy scan"] = time.perf_counter() - start
        for leak in report.leaks:
            _say(f"privacy: {leak}")
        if browser_check:
            from persam_lib.book.browser import check_book, find_chromium

            if find_chromium():
                start = time.perf_counter()
                result = check_book(html, screenshot=root / "_build" / "screenshots" / "index.png")
                report.stages["browser check"] = time.perf_counter() - start
                report.browser, report.browser_ok = result.line(), result.ok
                _say(result.line())
                for page in result.pages:
                    for problem in page.problems:
                        _say(f"browser: {problem}")
            else:
                _say("browser check skipped: no Chromium (apt-get install chromium, or make test installs it)")
    times = report.times()
    write_json_atomic(root / "_build" / "book_times.json", times)
    shown = ", ".join(f"{k} {v:.0f} s" for k, v in {**times["chapters"], **times["stages"]}.items())
    _say(f"times: {shown}; chapters {times['chapters_s']:.0f} s, total {times['total_s']:.0f} s (_build/book_times.json)")
    return report
