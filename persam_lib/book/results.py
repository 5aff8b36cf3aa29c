"""Key results of a notebook, machine-readable: published by the notebook, collected by whoever ran it.

A notebook calls `publish_results` with its headline numbers (and how far a re-execution may
differ from each). The values travel as a display output of their own MIME type inside the
executed notebook — like scrapbook's "glue" — so nothing depends on where the kernel runs or
which files it may write; Jupyter Book ignores the MIME type. Afterwards `read_notebook_record`
pulls results, tolerances, provenance and parameters out of an executed notebook, and
`write_sidecar` saves them as JSON beside it: what sweeps tabulate and `persam reproduce` compares.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from persam_lib.io.atomic import dumps_strict, write_text_atomic

RESULTS_MIME = "application/vnd.persam.results+json"
PROVENANCE_MIME = "application/vnd.persam.provenance+json"
DEFAULT_TOLERANCE = 1e-6  # for results published without a tolerance: a re-run on CPU must match


def publish_results(values: dict[str, Any], tolerances: dict[str, float] | None = None, default_tolerance: float = DEFAULT_TOLERANCE) -> None:
    """Show nothing, record ``values`` (numbers, strings, booleans) in the notebook's outputs.

    ``tolerances``: per result, the absolute difference a faithful re-execution may show (GPU
    kernels, thread counts); results without one get ``default_tolerance``.
    """
    from IPython.display import display

    clean = {str(k): _plain(v) for k, v in values.items()}
    bounds = {k: float((tolerances or {}).get(k, default_tolerance)) for k in clean}
    display({RESULTS_MIME: {"results": clean, "tolerances": bounds}, "text/plain": ""}, raw=True)


def _plain(value: Any) -> Any:
    """A JSON-ready scalar (numpy numbers become Python numbers; NaN and Inf become None)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if not isinstance(value, (int, float, str, bool, type(None))):
        raise TypeError(f"result values must be numbers, strings or booleans, got {type(value).__name__}")
    return value


@dataclass
class NotebookRecord:
    """What an executed notebook recorded about itself."""

    notebook: str  # the source notebook papermill ran
    parameters: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    tolerances: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None  # the failing cell (index in the executed notebook, execution count, error, source)


def read_notebook_record(path: str | Path) -> NotebookRecord:
    """Results, tolerances, provenance, parameters and any error of an executed notebook."""
    import nbformat

    nb = nbformat.read(Path(path), as_version=4)
    papermill = nb.metadata.get("papermill", {})
    record = NotebookRecord(notebook=str(papermill.get("input_path", "")), parameters=dict(papermill.get("parameters") or {}))
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if RESULTS_MIME in data:
                record.results.update(data[RESULTS_MIME]["results"])
                record.tolerances.update(data[RESULTS_MIME]["tolerances"])
            if PROVENANCE_MIME in data:
                record.provenance = dict(data[PROVENANCE_MIME])
            if output.get("output_type") == "error" and record.error is None:
                record.error = {"cell": index, "execution_count": cell.get("execution_count"), "ename": output.get("ename", ""), "evalue": output.get("evalue", ""), "source": cell.get("source", "")[:500]}
    return record


def sidecar_path(notebook: str | Path) -> Path:
    """``x.ipynb`` → ``x.results.json``."""
    notebook = Path(notebook)
    return notebook.with_name(notebook.stem + ".results.json")


def write_sidecar(notebook: str | Path, path: str | Path | None = None) -> Path:
    """Save an executed notebook's record as JSON (atomically) beside it, or at ``path``."""
    record = read_notebook_record(notebook)
    return write_text_atomic(Path(path) if path else sidecar_path(notebook), dumps_strict(asdict(record), indent=1, default=str))


def read_sidecar(path: str | Path) -> NotebookRecord:
    """A record written by `write_sidecar`."""
    return NotebookRecord(**json.loads(Path(path).read_text()))
