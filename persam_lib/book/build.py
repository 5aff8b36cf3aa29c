"""Build the book: execute every notebook with papermill, then compile with Jupyter Book.

`book/notebooks.yaml` says which notebook runs with which parameters. A notebook that fails
is reported by name (with papermill's message) while the others still run; the build then goes
on so the reader sees how far it got, and the command exits non-zero.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class NotebookSpec:
    """One entry of ``book/notebooks.yaml``."""

    name: str
    source: Path
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class BookReport:
    """What a book build did."""

    executed: dict[str, float] = field(default_factory=dict)  # name -> seconds
    failed: dict[str, str] = field(default_factory=dict)  # name -> reason
    build_returncode: int | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and self.build_returncode == 0

    def line(self) -> str:
        parts = [f"{len(self.executed)} notebook(s) executed", f"{len(self.failed)} failed"]
        if self.failed:
            parts[-1] += f" ({', '.join(self.failed)})"
        parts.append("book built" if self.build_returncode == 0 else "book build FAILED" if self.build_returncode is not None else "book not built")
        return "book: " + ", ".join(parts)


def read_notebook_specs(project_root: str | Path) -> list[NotebookSpec]:
    """Parse ``book/notebooks.yaml``; names the file and entry on any mistake."""
    root = Path(project_root)
    path = root / "book" / "notebooks.yaml"
    raw = yaml.safe_load(path.read_text())
    specs = []
    for i, entry in enumerate(raw.get("notebooks", [])):
        for key in ("name", "source"):
            if key not in entry:
                raise ValueError(f"{path}: notebook entry {i + 1} has no '{key}'")
        source = root / entry["source"]
        if not source.is_file():
            raise ValueError(f"{path}: notebook entry {i + 1} ('{entry['name']}'): {source} does not exist")
        specs.append(NotebookSpec(str(entry["name"]), source, dict(entry.get("parameters") or {})))
    return specs


def execute_notebooks(project_root: str | Path, work_dir: str | Path, overrides: dict[str, Any] | None = None, *, only: list[str] | None = None) -> BookReport:
    """Execute the book's notebooks in order into ``book/executed/``; failures are collected, not raised.

    ``overrides`` are given to every notebook that declares the parameter (others ignore them).
    """
    import papermill as pm

    root = Path(project_root).resolve()
    out_dir = root / "book" / "executed"
    out_dir.mkdir(parents=True, exist_ok=True)
    report = BookReport()
    for spec in read_notebook_specs(root):
        if only and spec.name not in only:
            continue
        declared = _declared_parameters(spec.source)
        parameters = {**spec.parameters, "work_dir": str(Path(work_dir).resolve()), **{k: v for k, v in (overrides or {}).items() if k in declared}}
        target = out_dir / f"{spec.name}.ipynb"
        tmp = out_dir / f".{spec.name}.running.ipynb"
        start = time.perf_counter()
        print(f"[persam book] executing {spec.source.relative_to(root)} -> {target.relative_to(root)}", flush=True)
        try:
            pm.execute_notebook(str(spec.source), str(tmp), parameters=parameters, kernel_name="python3", cwd=str(root), progress_bar=False, log_output=False)
            os.replace(tmp, target)
            report.executed[spec.name] = time.perf_counter() - start
            print(f"[persam book] {spec.name} done in {report.executed[spec.name]:.0f} s", flush=True)
        except Exception as err:  # papermill raises PapermillExecutionError with the failing cell
            report.failed[spec.name] = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
            if tmp.exists():
                os.replace(tmp, target)  # keep the partly executed notebook: the book shows the error
            print(f"[persam book] FAILED {spec.name}: {report.failed[spec.name]}", flush=True)
    return report


def _declared_parameters(notebook: Path) -> set[str]:
    """Names assigned in the notebook's cell tagged ``parameters``."""
    import ast

    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if "parameters" in cell.metadata.get("tags", []):
            return {t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}
    return set()


def build_html(project_root: str | Path, *, strict: bool = False) -> int:
    """Run ``jupyter-book build`` on the project root (``-W -n --keep-going`` when ``strict``)."""
    root = Path(project_root).resolve()
    jb = Path(sys.executable).with_name("jupyter-book")
    command = [str(jb) if jb.exists() else "jupyter-book", "build", str(root)]
    if strict:
        command += ["-W", "-n", "--keep-going"]
    return subprocess.call(command, cwd=root)


def make_book(project_root: str | Path, work_dir: str | Path, overrides: dict[str, Any] | None = None, *, strict: bool = False) -> BookReport:
    """Execute all notebooks, then build the HTML book into ``_build/html``."""
    report = execute_notebooks(project_root, work_dir, overrides)
    report.build_returncode = build_html(project_root, strict=strict)
    return report
