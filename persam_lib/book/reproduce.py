"""Reviewer re-execution: run a published notebook again with its recorded parameters and compare.

`reproduce` reads the executed notebook's record (its source, the parameters papermill used and
the results it published, with a tolerance for each), executes the source again with the same
parameters — writing what it makes to a fresh output folder, so nothing published is reused —
and compares every result: a number must lie within its tolerance, anything else must be equal.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from persam_lib.book.parameters import declared_parameters
from persam_lib.book.results import NotebookRecord, read_notebook_record


@dataclass
class Reproduction:
    """The published and the re-executed record of a notebook, and their comparison."""

    published: NotebookRecord
    reproduced: NotebookRecord
    comparison: pd.DataFrame  # result, published, reproduced, difference, tolerance, ok
    executed: Path
    seconds: float

    @property
    def ok(self) -> bool:
        return self.reproduced.error is None and bool(len(self.comparison)) and bool(self.comparison["ok"].all())

    def line(self) -> str:
        bad = int((~self.comparison["ok"]).sum()) if len(self.comparison) else 0
        if self.reproduced.error:
            return f"reproduce: the re-execution FAILED at In [{self.reproduced.error['execution_count']}] ({self.reproduced.error['ename']}: {self.reproduced.error['evalue']})"
        if not len(self.comparison):
            return "reproduce: the published notebook records no results to compare"
        verdict = "all within tolerance" if bad == 0 else f"{bad} MISMATCH(ES)"
        return f"reproduce: {len(self.comparison)} result(s) compared, {verdict} ({self.seconds:.0f} s)"


def compare_results(published: NotebookRecord, reproduced: NotebookRecord, tolerance: float | None = None) -> pd.DataFrame:
    """One row per published result: both values, their difference and whether it is within tolerance
    (the published tolerance, or ``tolerance`` for all when given). A result missing from the
    re-execution is a mismatch."""
    rows = []
    for name, value in published.results.items():
        bound = tolerance if tolerance is not None else float(published.tolerances.get(name, 0.0))
        again = reproduced.results.get(name, _MISSING)
        row: dict[str, Any] = {"result": name, "published": value, "reproduced": None if again is _MISSING else again, "difference": None, "tolerance": bound}
        if again is _MISSING:
            row["ok"] = False
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(again, (int, float)) and not isinstance(again, bool):
            row["difference"] = abs(float(again) - float(value))
            row["ok"] = row["difference"] <= bound
        else:
            row["ok"] = value == again
        rows.append(row)
    return pd.DataFrame(rows, columns=["result", "published", "reproduced", "difference", "tolerance", "ok"])


_MISSING = object()


def reproduce(notebook: str | Path, *, work_dir: str | Path | None = None, out_dir: str | Path | None = None, source: str | Path | None = None, tolerance: float | None = None, cwd: str | Path = ".") -> Reproduction:
    """Re-execute a published (executed) notebook with its recorded parameters and compare its results.

    ``work_dir`` replaces the recorded work dir (where the earlier chapters' products are);
    ``out_dir`` (default ``<work_dir>/reproduce/<notebook>``, emptied first) receives what the
    re-execution makes; ``source`` replaces the recorded source notebook path.
    """
    import papermill as pm

    notebook = Path(notebook)
    if not notebook.is_file():
        raise FileNotFoundError(f"{notebook}: no such notebook; give a published, executed notebook such as book/executed/training.ipynb")
    published = read_notebook_record(notebook)
    if not published.parameters and not published.notebook:
        raise ValueError(f"{notebook}: not a notebook executed by papermill (no recorded parameters or source); run `persam book` first")
    if published.error:
        raise ValueError(f"{notebook}: the published run itself failed at In [{published.error['execution_count']}]; there is nothing to reproduce")
    origin = Path(source) if source else Path(published.notebook)
    if not origin.is_absolute():
        origin = Path(cwd) / origin
    if not origin.is_file():
        raise FileNotFoundError(f"{origin}: the source notebook recorded in {notebook} is not here; pass --source PATH")
    parameters = dict(published.parameters)
    if work_dir is not None:
        parameters["work_dir"] = str(Path(work_dir).resolve())
    base = Path(parameters.get("work_dir", "."))
    if not base.is_absolute():  # the book records paths relative to the project root, where its notebooks ran
        base = Path(cwd).resolve() / base
    target = Path(out_dir) if out_dir else base / "reproduce" / notebook.stem
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    if "output_dir" in declared_parameters(origin):
        parameters["output_dir"] = str(target.resolve())
    executed = target / f"{notebook.stem}.ipynb"
    start = time.perf_counter()
    try:
        pm.execute_notebook(str(origin), str(executed), parameters=parameters, kernel_name="python3", cwd=str(Path(cwd).resolve()), progress_bar=False, log_output=False)
    except pm.PapermillExecutionError:
        pass  # the error is in the executed notebook; reported below
    reproduced = read_notebook_record(executed)
    return Reproduction(published, reproduced, compare_results(published, reproduced, tolerance), executed, time.perf_counter() - start)
