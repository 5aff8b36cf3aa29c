"""Sweeps: the same sweep run point after point and in 2 worker processes, side by side.

The sweep executes a small notebook (about 10 s of single-threaded work after its kernel starts;
the book's sweep points take 30 s and more) at 6 points; each run starts from an empty folder. Reported: points per minute with 2
workers against one after the other (goal >= 1.8), beside what 2 processes give over 1 on this
machine for pure CPU work (the ceiling for any 2-worker figure here).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import nbformat

from benchmarks.common import Row

POINTS = 6


def _notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}, "language_info": {"name": "python"}}
    parameters = nbformat.v4.new_code_cell('work_dir = ""\noutput_dir = ""\nseed = 0')
    parameters.metadata["tags"] = ["parameters"]
    work = nbformat.v4.new_code_cell("total = 0\nfor i in range(100_000_000):\n    total += i ^ seed\nfrom persam_lib.book.results import publish_results\npublish_results({'total': total})")
    nb.cells = [parameters, work]
    for i, cell in enumerate(nb.cells):
        cell.id = f"bench-{i}"
    nbformat.write(nb, path)
    return path


def run() -> list[Row]:
    from benchmarks.bench_extract import machine_scaling
    from persam_lib.book.sweep import load_sweep, run_sweep

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _notebook(folder / "busy.ipynb")
        (folder / "sweep.yaml").write_text(f"notebooks:\n  - notebook: busy.ipynb\n    grid: {{seed: {list(range(POINTS))}}}\n")
        seconds = {}
        for workers in (1, 2):
            sweep = load_sweep(folder / "sweep.yaml", folder)
            sweep.out = folder / f"runs_{workers}"
            start = time.perf_counter()
            report = run_sweep(sweep, folder, workers=workers, cwd=folder, progress=False)
            seconds[workers] = time.perf_counter() - start
            assert not report.failed, report.line()
    per_minute = {w: POINTS / s * 60 for w, s in seconds.items()}
    return [Row(f"sweep of {POINTS} notebook points: 2 workers vs one after the other (points/min)", per_minute[2], per_minute[1], "/", ">= 1.8"), machine_scaling()]


if __name__ == "__main__":
    from benchmarks.common import print_table

    print_table("sweeps", run())
