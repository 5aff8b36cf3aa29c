"""The one YAML loader: manifests, sweeps, ``--config``, ``--alterations`` and ground truth.

Every YAML file the project reads goes through `load_yaml` (values) or `compose_yaml` (a node
tree with line numbers, for checkers that report lines). Only plain YAML is accepted — an
unsafe tag such as ``!!python/object`` is refused — and every problem is a `YamlFileError`
naming the file and line and saying what to do, never a traceback.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class YamlFileError(ValueError):
    """A YAML file is missing, unreadable, malformed or uses a tag that is not plain YAML."""

    def __init__(self, path: str | Path, problem: str, hint: str, line: int | None = None):
        self.path, self.problem, self.hint, self.line = Path(path), problem, hint, line
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}. {hint}")


def _read(path: Path, what: str) -> str:
    if not path.exists():
        raise YamlFileError(path, f"the {what} does not exist", "Check the path you gave.")
    if path.is_dir():
        raise YamlFileError(path, f"is a directory, not a {what}", "Give the path of the YAML file itself.")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise YamlFileError(path, f"is not UTF-8 text (byte {err.start})", "Save the file as UTF-8 text.") from None
    except OSError as err:
        raise YamlFileError(path, f"could not be read ({err.strerror})", "Check the file's permissions.") from None


def _error(path: Path, err: yaml.YAMLError, what: str) -> YamlFileError:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    line = mark.line + 1 if mark is not None else None
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if isinstance(err, yaml.constructor.ConstructorError):
        tag = problem.split("tag", 1)[-1].strip(" '") if "tag" in problem else ""
        return YamlFileError(path, f"uses a YAML tag that is not plain data ({tag or problem})", f"A {what} holds only plain values, lists and mappings; remove the tag.", line)
    return YamlFileError(path, f"is not valid YAML ({problem})", "Fix the YAML syntax at that line.", line)


def load_yaml(path: str | Path, what: str = "YAML file") -> Any:
    """The plain-data content of a YAML file (``None`` when it is empty); ``what`` names the kind
    of file in messages ("manifest", "sweep file", ...)."""
    path = Path(path)
    text = _read(path, what)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise _error(path, err, what) from None


def compose_yaml(path: str | Path, what: str = "YAML file") -> yaml.Node | None:
    """A YAML file's node tree (each node knows its line); its values are built later with
    `node_value`, so nothing is constructed from the file unchecked."""
    path = Path(path)
    text = _read(path, what)
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise _error(path, err, what) from None


def node_value(node: yaml.Node, path: str | Path, what: str = "YAML file") -> Any:
    """The plain-data value of one node of a `compose_yaml` tree (unsafe tags refused, with the line)."""
    loader = yaml.SafeLoader("")  # constructs from the node itself, so errors carry the file's own lines
    try:
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise _error(Path(path), err, what) from None
    finally:
        loader.dispose()
