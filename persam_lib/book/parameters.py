"""The parameters a notebook declares in its cell tagged ``parameters``, with their defaults.

Runners (the book build, sweeps, `persam reproduce`) use them to give each notebook only the
parameters it declares and to check values before anything runs: a value must have the type of
the parameter's default (an int where the default is an int; a float may be written as an int).
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

# Set by the runners themselves, never by a user's sweep
RUNNER_PARAMETERS = ("work_dir", "output_dir")


def declared_parameters(notebook: str | Path) -> dict[str, Any]:
    """Name → default value of every assignment in the ``parameters`` cell (non-literal defaults map to None)."""
    import nbformat

    nb = nbformat.read(Path(notebook), as_version=4)
    for cell in nb.cells:
        if "parameters" in cell.metadata.get("tags", []):
            out = {}
            for node in ast.parse(cell.source).body:
                if isinstance(node, ast.Assign):
                    try:
                        value = ast.literal_eval(node.value)
                    except ValueError:
                        value = None
                    out.update({t.id: value for t in node.targets if isinstance(t, ast.Name)})
            return out
    return {}


def type_problem(name: str, value: Any, default: Any) -> str | None:
    """Why ``value`` cannot stand in for a parameter whose default is ``default``, or None."""
    if default is None:
        return None
    expected = type(default)
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, expected)
    if ok:
        return None
    kind = {bool: "true or false", int: "an int", float: "a number", str: "a string", list: "a list", dict: "a mapping"}.get(expected, expected.__name__)
    return f"parameter '{name}' must be {kind} (its default is {default!r}), got {value!r}"
