"""Provenance: what produced a notebook's numbers — library version and commit, packages, device, seed, parameters.

Every notebook of the book ends with a cell calling `show_provenance()`. It shows a table and
records the same facts, machine-readable, in the notebook's outputs (see `persam_lib.book.results`).
The parameters are the ones the run actually used: the notebook's ``parameters`` cell and the
cell papermill injects after it, read back from the kernel's history and namespace, so the
record is right however the notebook was run (papermill, `persam book`, a sweep, or by hand).
"""
from __future__ import annotations

import ast
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "numpy", "pandas", "scikit-learn", "scipy", "h5py", "openslide-python", "openslide-bin", "tifffile", "captum", "shap", "papermill", "jupyter-book", "matplotlib", "seaborn")


def git_commit(path: str | Path | None = None) -> str:
    """The commit of the git checkout holding ``path`` (default: this library), with ``+dirty`` when
    tracked files differ from it; ``unknown`` outside a checkout."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def device_description() -> str:
    """The accelerator the models would use: the CUDA device's name, or the CPU."""
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def collect_provenance(parameters: dict[str, Any]) -> dict[str, Any]:
    """Library version, git commit, Python and package versions, device, seed and parameters."""
    try:
        version = metadata.version("persam-lib")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "persam_lib": version,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "packages": package_versions(),
        "device": device_description(),
        "seed": parameters.get("seed"),
        "parameters": parameters,
    }


def assigned_names(source: str) -> list[str]:
    """Names assigned at the top level of a cell's source (the parameters it declares)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    return [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)]


def notebook_parameters(history: list[str], namespace: dict[str, Any]) -> dict[str, Any]:
    """The run's parameters: names assigned in the first executed cell (the ``parameters`` cell,
    which every notebook of the book opens with) and in papermill's injected cell (it starts with
    ``# Parameters``), with their values now in ``namespace``."""
    code = [source for source in history if source.strip()]
    cells = code[:1] + [source for source in code[1:] if source.lstrip().startswith("# Parameters")]
    names = dict.fromkeys(name for source in cells for name in assigned_names(source))
    return {name: _jsonable(namespace[name]) for name in names if name in namespace}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def show_provenance() -> dict[str, Any]:
    """The provenance cell: show a table of what produced this notebook and record it in its outputs."""
    import pandas as pd
    from IPython import get_ipython
    from IPython.display import Markdown, display

    from persam_lib.book.results import PROVENANCE_MIME

    shell = get_ipython()
    history = list(shell.user_ns.get("In", [])) if shell is not None else []
    record = collect_provenance(notebook_parameters(history, shell.user_ns if shell is not None else {}))
    rows = [("persam_lib", f"{record['persam_lib']} (commit {record['git_commit']})"), ("python", record["python"]), ("device", record["device"]), ("seed", str(record["seed"]))]
    rows += [(f"parameter `{k}`", str(v)) for k, v in record["parameters"].items()]
    rows += [(name, version) for name, version in record["packages"].items()]
    display(Markdown("This chapter was computed with:"))
    display(pd.DataFrame(rows, columns=["", "value"]).set_index(""))
    display({PROVENANCE_MIME: record, "text/plain": ""}, raw=True)
    return record
