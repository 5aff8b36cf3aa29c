"""Parameter sweeps: notebooks executed by papermill over a grid (or list) of parameters.

A sweep file (YAML, loaded safely) names notebooks and their points::

    name: seeds
    out: runs                      # where points go, relative to this file (--out overrides)
    parameters: {epochs: 30}       # given to every point of every notebook that declares them
    notebooks:
      - notebook: training         # a chapter of book/notebooks.yaml, or a path to a notebook
        grid: {seed: [0, 1, 2]}    # every combination
        parameters: {models: [persam, abmil], workers: 1}
      - notebook: attention
        points: [{examples: 1}, {examples: 2}]

Everything is checked before anything runs — unknown keys, notebooks, parameter names and value
types (against each parameter's default) — and each problem names the file and line. Each point
runs into ``<out>/<notebook>/<hash of its parameters>/``: ``parameters.json`` first, then the
executed ``notebook.ipynb`` and, last, ``results.json`` (the notebook's record, see
`persam_lib.book.results`), whose presence marks the point finished: a rerun skips it. A failing
point leaves ``failure.json`` (the failing cell and error) and its partly executed notebook; the
other points go on. Points run one after another, in ``workers`` local processes (with GPUs, each
running point gets its own: ``CUDA_VISIBLE_DEVICES``), or as tasks on a Dask cluster. One sweep at
a time runs into an out folder (`persam_lib.io.locks.output_lock`); a second stops at once.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import yaml

from persam_lib.io.atomic import dumps_strict, remove_stale_temps, write_text_atomic
from persam_lib.io.locks import output_lock
from persam_lib.io.yaml_files import YamlFileError, compose_yaml, node_value
from persam_lib.book.parameters import RUNNER_PARAMETERS, declared_parameters, type_problem
from persam_lib.book.results import read_notebook_record, read_sidecar, write_sidecar

SWEEP_KEYS = {"name", "out", "parameters", "notebooks"}
ENTRY_KEYS = {"notebook", "grid", "points", "parameters"}


class SweepError(ValueError):
    """A sweep file is invalid; lists every problem, each with its line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(["problems in the sweep file:", *(f"  - {p}" for p in problems)]) if len(problems) > 1 else problems[0])


@dataclass(frozen=True)
class Point:
    """One notebook run of a sweep."""

    notebook: str  # the name it is filed under
    source: Path
    parameters: dict[str, Any]  # what the user asked for (without the runner's work_dir/output_dir)

    @property
    def key(self) -> str:
        """12 hex digits of the SHA-256 of the notebook name and its parameters (canonical JSON)."""
        # plain json.dumps on purpose: the key names existing point folders, so its text must never change
        blob = json.dumps({"notebook": self.notebook, "parameters": self.parameters}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass
class Sweep:
    """A validated sweep: its name, where its points go, and the points."""

    name: str
    out: Path
    points: list[Point]


def on_cohort(sweep: Sweep, **inputs: str) -> Sweep:
    """``sweep`` with every point given the book's cohort inputs (``manifest``, ``features_dir``:
    the non-empty ones, for points whose notebook declares them): a book built on the user's cohort
    sweeps that cohort, not the demo. The points' keys (folders) change with them."""
    from persam_lib.book.parameters import declared_parameters

    given = {k: v for k, v in inputs.items() if v}
    if not given:
        return sweep
    points = []
    for point in sweep.points:
        declared = declared_parameters(point.source)
        points.append(Point(point.notebook, point.source, {**{k: v for k, v in given.items() if k in declared}, **point.parameters}))
    return Sweep(sweep.name, sweep.out, points)


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _mapping(node: yaml.Node) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    return {str(k.value): (k, v) for k, v in node.value} if isinstance(node, yaml.MappingNode) else {}


def _values_of(path: Path):
    """A function giving the plain-data value of a node of ``path``'s tree (`node_value`: unsafe tags refused, with the line)."""
    return lambda node: node_value(node, path, "sweep file")


def _book_chapters(project_root: Path) -> dict[str, Path]:
    """The book's chapters (``book/notebooks.yaml``) by name; none outside a book project."""
    from persam_lib.book.build import read_notebook_specs

    if not (project_root / "book" / "notebooks.yaml").is_file():
        return {}
    return {spec.name: spec.source for spec in read_notebook_specs(project_root)}


def load_sweep(path: str | Path, project_root: str | Path = ".") -> Sweep:
    """Read and check a sweep file; raise `SweepError` listing every problem (file and line).

    The file is read by the one YAML loader (`persam_lib.io.yaml_files`): malformed YAML or a tag
    that is not plain data (``!!python/...``) is one problem naming the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such sweep file")
    try:
        root = compose_yaml(path, "sweep file")  # a node tree with line numbers; nothing constructed yet
        if root is not None:
            node_value(root, path, "sweep file")  # every value is plain data (an unsafe tag anywhere is refused, with its line)
    except YamlFileError as err:
        raise SweepError([str(err)]) from None
    _value = _values_of(path)
    where = lambda node: f"{path}, line {_line(node)}"  # noqa: E731
    if not isinstance(root, yaml.MappingNode):
        raise SweepError([f"{path}: a sweep file is a mapping with a 'notebooks' list (see `persam sweep --help`)"])
    problems: list[str] = []
    top = _mapping(root)
    for name, (key, _) in top.items():
        if name not in SWEEP_KEYS:
            problems.append(f"{where(key)}: unknown key '{name}'; a sweep file has {sorted(SWEEP_KEYS)}")
    if "notebooks" not in top or not isinstance(top["notebooks"][1], yaml.SequenceNode) or not top["notebooks"][1].value:
        raise SweepError(problems + [f"{path}: needs a non-empty 'notebooks:' list, each entry with 'notebook:' and 'grid:' or 'points:'"])
    shared = _value(top["parameters"][1]) if "parameters" in top else {}
    if not isinstance(shared, dict):
        problems.append(f"{where(top['parameters'][1])}: 'parameters' must be a mapping of parameter names to values")
        shared = {}
    chapters = _book_chapters(Path(project_root).resolve())
    points: list[Point] = []
    used: set[str] = set()
    for entry in top["notebooks"][1].value:
        fields = _mapping(entry)
        if not fields:
            problems.append(f"{where(entry)}: each notebook entry is a mapping with 'notebook:' and 'grid:' or 'points:'")
            continue
        for name, (key, _) in fields.items():
            if name not in ENTRY_KEYS:
                problems.append(f"{where(key)}: unknown key '{name}' in a notebook entry; use {sorted(ENTRY_KEYS)}")
        if "notebook" not in fields:
            problems.append(f"{where(entry)}: the entry names no 'notebook:'")
            continue
        name_node = fields["notebook"][1]
        notebook = str(_value(name_node))
        source = chapters.get(notebook) or (path.parent / notebook if (path.parent / notebook).is_file() else Path(notebook))
        if not source.is_file():
            problems.append(f"{where(name_node)}: unknown notebook '{notebook}'; use one of the book's chapters {sorted(chapters)} or a path to a .ipynb")
            continue
        if Path(notebook).is_absolute() or ".." in Path(notebook).parts:
            problems.append(f"{where(name_node)}: notebook '{notebook}' would file its points outside the sweep's out folder; name a chapter, or a notebook by a path below the sweep file's folder")
            continue
        declared = declared_parameters(source)
        fixed = {k: v for k, v in shared.items() if k in declared}  # shared parameters go to the notebooks that declare them
        if fixed:
            problems += _check(fixed, declared, notebook, top["parameters"][1], where)
        if "parameters" in fields:
            own = _value(fields["parameters"][1])
            if isinstance(own, dict):
                problems += _check(own, declared, notebook, fields["parameters"][1], where)
                fixed.update(own)
            else:
                problems.append(f"{where(fields['parameters'][1])}: 'parameters' must be a mapping of parameter names to values")
        entry_points, entry_problems = _entry_points(fields, declared, notebook, where, _value)
        problems += entry_problems
        points += [Point(notebook, source.resolve(), {**fixed, **varying}) for varying in entry_points]
        used.update(declared)
    for name in shared:
        if name not in used:
            problems.append(f"{where(top['parameters'][1])}: parameter '{name}' is declared by none of the sweep's notebooks")
    if problems:
        raise SweepError(problems)
    out = path.parent / str(_value(top["out"][1])) if "out" in top else path.parent / "runs"
    return Sweep(str(_value(top["name"][1])) if "name" in top else path.stem, out.resolve(), points)


def _entry_points(fields: dict, declared: dict, notebook: str, where, _value) -> tuple[list[dict[str, Any]], list[str]]:
    """The varying parameters of each point of one entry (grid combinations, or the listed points)."""
    problems: list[str] = []
    if "grid" in fields and "points" in fields:
        return [], [f"{where(fields['grid'][0])}: give either 'grid:' or 'points:', not both"]
    if "grid" in fields:
        node = fields["grid"][1]
        grid = _value(node)
        if not isinstance(grid, dict) or not grid:
            return [], [f"{where(node)}: 'grid' must map parameter names to lists of values"]
        for name, values in grid.items():
            if not isinstance(values, list) or not values:
                problems.append(f"{where(node)}: grid values of '{name}' must be a non-empty list, e.g. {name}: [1, 2]")
            else:
                for value in values:
                    problems += _check({name: value}, declared, notebook, node, where)
        if problems:
            return [], problems
        names = list(grid)
        return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))], []
    if "points" in fields:
        node = fields["points"][1]
        listed = _value(node)
        if not isinstance(listed, list) or not listed or not all(isinstance(p, dict) for p in listed):
            return [], [f"{where(node)}: 'points' must be a non-empty list of mappings, e.g. [{{seed: 0}}, {{seed: 1}}]"]
        for point_node, point in zip(node.value, listed):
            problems += _check(point, declared, notebook, point_node, where)
        return listed, problems
    return [{}], []


def _check(values: dict[str, Any], declared: dict[str, Any], notebook: str, node: yaml.Node, where) -> list[str]:
    problems = []
    for name, value in values.items():
        if name in RUNNER_PARAMETERS:
            problems.append(f"{where(node)}: '{name}' is set by the sweep runner (--work, the point's folder); remove it")
        elif name not in declared:
            problems.append(f"{where(node)}: notebook '{notebook}' has no parameter '{name}'; its parameters are {sorted(set(declared) - set(RUNNER_PARAMETERS))}")
        else:
            problem = type_problem(name, value, declared[name])
            if problem:
                problems.append(f"{where(node)}: notebook '{notebook}': {problem}")
    return problems


@dataclass
class PointOutcome:
    notebook: str
    key: str
    status: str  # "done", "skipped" (finished before) or "failed"
    seconds: float = 0.0
    error: str = ""


@dataclass
class SweepReport:
    outcomes: list[PointOutcome] = field(default_factory=list)
    table: Path | None = None

    @property
    def failed(self) -> list[PointOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def line(self) -> str:
        counts = {s: sum(o.status == s for o in self.outcomes) for s in ("done", "skipped", "failed")}
        text = f"sweep: {len(self.outcomes)} point(s): {counts['done']} done, {counts['skipped']} skipped (finished before), {counts['failed']} failed"
        if self.failed:
            text += " (" + "; ".join(f"{o.notebook}/{o.key}: {o.error}" for o in self.failed) + ")"
        return text


def point_dir(sweep_out: Path, point: Point) -> Path:
    """``<out>/<notebook>/<key>``, refused (`UnsafePathError`) should it resolve outside ``out``."""
    from persam_lib.io.paths import inside

    inside(sweep_out, point.notebook, point.key)
    return Path(sweep_out) / point.notebook / point.key


def _run_point(job: tuple[Point, str, str, str, Any, int]) -> PointOutcome:
    """Execute one point (in a worker process or Dask task); never raises for a failing notebook.

    With ``threads`` > 0 the point's kernel is limited to that many CPU threads: points running
    side by side must share the cores, not each claim all of them (oversubscribed, two PyTorch
    kernels on two cores ran ~5x slower than one after the other).
    """
    import papermill as pm

    point, out, work_dir, cwd, gpus, threads = job
    if threads:
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[variable] = str(threads)  # the kernel papermill starts inherits them
    folder = point_dir(Path(out), point)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder)  # left by a killed earlier attempt (never a live writer's)
    (folder / "failure.json").unlink(missing_ok=True)
    declared = declared_parameters(point.source)
    runner = {k: v for k, v in (("work_dir", work_dir), ("output_dir", str(folder))) if k in declared}
    write_text_atomic(folder / "parameters.json", dumps_strict({"notebook": point.notebook, "source": str(point.source), "parameters": point.parameters, **runner}, indent=1, default=str))
    gpu = gpus.get() if gpus is not None else None
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # the kernel papermill starts inherits it
    start = time.perf_counter()
    running = folder / ".notebook.running.ipynb"
    try:
        with _stderr_to(folder / "kernel.log"):  # the kernel's own messages go to the point's log, not the caller's output
            pm.execute_notebook(str(point.source), str(running), parameters={**point.parameters, **runner}, kernel_name="python3", cwd=cwd, progress_bar=False, log_output=False)
        os.replace(running, folder / "notebook.ipynb")
        write_sidecar(folder / "notebook.ipynb", folder / "results.json")  # last: marks the point finished
        return PointOutcome(point.notebook, point.key, "done", time.perf_counter() - start)
    except Exception as err:  # noqa: BLE001 - a failing point is recorded and the sweep goes on
        failure: dict[str, Any] = {"error": type(err).__name__, "message": str(err).strip()[-2000:]}
        if running.exists():
            os.replace(running, folder / "notebook.failed.ipynb")
            recorded = read_notebook_record(folder / "notebook.failed.ipynb").error
            if recorded:
                failure.update(recorded)
        write_text_atomic(folder / "failure.json", dumps_strict(failure, indent=1, default=str))
        where = f" at In [{failure['execution_count']}]" if failure.get("execution_count") else ""
        return PointOutcome(point.notebook, point.key, "failed", time.perf_counter() - start, f"{failure.get('ename') or failure['error']}{where}")
    finally:
        if gpus is not None and gpu is not None:
            gpus.put(gpu)


@contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Point file descriptor 2 at ``path`` while the block runs (child processes inherit it), then restore it."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def run_sweep(sweep: Sweep, work_dir: str | Path, *, workers: int = 1, scheduler: str | None = None, cwd: str | Path = ".", progress: bool = True) -> SweepReport:
    """Run every unfinished point of ``sweep`` and collect the results table (``results.csv``).

    The sweep's out folder is locked while it runs (`persam_lib.io.locks.output_lock`): a second
    sweep into the same folder stops at once with `FolderBusyError` instead of running points twice.
    """
    if workers < 1:
        raise ValueError(f"The 'workers' parameter must be an int >= 1. Got {workers!r} instead.")
    with output_lock(sweep.out, "sweep"):
        remove_stale_temps(sweep.out)
        return _run_unfinished(sweep, work_dir, workers=workers, scheduler=scheduler, cwd=cwd, progress=progress)


def _run_unfinished(sweep: Sweep, work_dir: str | Path, *, workers: int, scheduler: str | None, cwd: str | Path, progress: bool) -> SweepReport:
    """`run_sweep`'s work, under the out folder's lock."""
    from tqdm import tqdm

    report = SweepReport()
    todo = []
    work_dir, cwd = str(Path(work_dir).resolve()), str(Path(cwd).resolve())
    for point in sweep.points:
        folder = point_dir(sweep.out, point)
        if (folder / "results.json").is_file():
            recorded = json.loads((folder / "parameters.json").read_text()).get("work_dir", work_dir)
            if recorded != work_dir:  # a finished point is only "the same point" on the same inputs
                raise ValueError(f"{folder}: this point was computed on the work dir {recorded}, not {work_dir}; give the sweep another --out (or delete the old one)")
            report.outcomes.append(PointOutcome(point.notebook, point.key, "skipped"))
        else:
            todo.append(point)
    bar = tqdm(total=len(todo), desc=f"sweep {sweep.name}", disable=not progress)
    if scheduler:
        from dask.distributed import Client, as_completed

        with Client(scheduler) as client:  # GPUs: start the cluster's workers one per GPU (dask-cuda pins them)
            futures = client.map(_run_point, [(p, str(sweep.out), work_dir, cwd, None, 0) for p in todo], pure=False)
            for future in as_completed(futures):
                report.outcomes.append(future.result())
                bar.update()
    elif workers > 1 and len(todo) > 1:
        from concurrent.futures import ProcessPoolExecutor, as_completed as completed
        from contextlib import nullcontext
        from multiprocessing import Manager, get_context

        gpu_count = _gpu_count()
        with (Manager() if gpu_count else nullcontext()) as manager, ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            gpus = _gpu_queue(manager, gpu_count) if gpu_count else None
            threads = max(1, (os.cpu_count() or 1) // workers)
            futures = [pool.submit(_run_point, (p, str(sweep.out), work_dir, cwd, gpus, threads)) for p in todo]
            for future in completed(futures):
                report.outcomes.append(future.result())
                bar.update()
    else:
        for point in todo:
            report.outcomes.append(_run_point((point, str(sweep.out), work_dir, cwd, None, 0)))
            bar.update()
    bar.close()
    report.table = write_results_table(sweep)
    return report


def _gpu_count() -> int:
    """GPUs on this machine (0 without CUDA)."""
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable CUDA
        return 0


def _gpu_queue(manager: Any, count: int) -> Any:
    """A queue of GPU ids shared by the worker processes: each running point takes one and gives it back."""
    queue = manager.Queue()
    for gpu in range(count):
        queue.put(gpu)
    return queue


def results_table(sweep: Sweep) -> pd.DataFrame:
    """The tidy table of a sweep: one row per finished point and result, with the point's
    parameters as columns (``notebook, point, <parameters...>, result, value``)."""
    rows = []
    for point in sweep.points:
        path = point_dir(sweep.out, point) / "results.json"
        if not path.is_file():
            continue
        record = read_sidecar(path)
        for name, value in record.results.items():
            rows.append({"notebook": point.notebook, "point": point.key, **{k: v if not isinstance(v, (list, dict)) else dumps_strict(v) for k, v in point.parameters.items()}, "result": name, "value": value})
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["notebook", "point", "result", "value"])  # no point finished: the columns still exist


def write_results_table(sweep: Sweep) -> Path:
    """`results_table` as ``<out>/results.csv`` (atomically)."""
    sweep.out.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(sweep.out / "results.csv", results_table(sweep).to_csv(index=False))
