"""Setting a configuration dataclass from text: ``--set name=value`` on the command line, or a YAML file.

Instead of one command-line flag per knob, every field of a configuration dataclass (such as
`persam_lib.train.loop.TrainConfig`) can be set by name. Values are converted to the field's
type, and an unknown name or a value of the wrong type is an error that says what is expected.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar


from persam_lib.io.yaml_files import load_yaml

C = TypeVar("C")

_TRUE, _FALSE = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}
_EXPECTED = {bool: "true or false", int: "an int", float: "a float", str: "a string"}


def _field_types(config: Any) -> dict[str, type]:
    hints = typing.get_type_hints(type(config))
    return {f.name: hints[f.name] for f in dataclasses.fields(config)}


def _convert(name: str, value: Any, kind: type, owner: str) -> Any:
    """``value`` (text or a YAML scalar) as ``kind``; a clear error when it is not one."""
    text = str(value).strip()
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            raise ValueError
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(text)
        if kind is float:
            return float(text)
        if kind is str:
            return text
    except ValueError:
        raise ValueError(f"The {owner} option '{name}' must be {_EXPECTED[kind]}. Got {text!r} instead.") from None
    raise TypeError(f"{owner}.{name}: fields of type {kind} cannot be set from text")


def with_overrides(config: C, overrides: dict[str, Any], source: str = "") -> C:
    """A copy of ``config`` with the named fields replaced (values converted to each field's type).

    ``source`` (a file name, say) is named in errors. Validation in the dataclass's
    ``__post_init__`` runs on the result.
    """
    types = _field_types(config)
    owner = type(config).__name__
    where = f"{source}: " if source else ""
    try:
        changes = {}
        for name, value in overrides.items():
            if name not in types:
                raise ValueError(f"unknown {owner} option '{name}'. Options are: {', '.join(types)}.")
            changes[name] = _convert(name, value, types[name], owner)
        return dataclasses.replace(config, **changes)
    except ValueError as err:
        raise ValueError(f"{where}{err}") from None


def parse_assignments(assignments: list[str]) -> dict[str, str]:
    """``["lr=1e-3", "dropout=0.2"]`` → ``{"lr": "1e-3", "dropout": "0.2"}``; each must be NAME=VALUE."""
    out = {}
    for text in assignments:
        name, sep, value = text.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--set expects NAME=VALUE (for example --set lr=1e-3), got {text!r}")
        out[name.strip()] = value.strip()
    return out


def parse_yaml_value(name: str, text: str) -> Any:
    """The value of ``--set NAME=TEXT`` read as a plain YAML scalar or list (``3``, ``0.1``, ``[a, b]``)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"--set {name}={text}: the value is not plain YAML ({problem}). Give a number, a word, true/false or a list like [a, b].") from None


def load_overrides(path: str | Path) -> dict[str, Any]:
    """The mapping of option names to values in a YAML file (loaded safely)."""
    data = load_yaml(path, "configuration file") or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a configuration file must be a mapping of option names to values, like 'lr: 0.001'")
    return data


def configure(config: C, yaml_path: str | Path | None = None, assignments: list[str] | None = None) -> C:
    """``config`` with a YAML file's options and then ``--set`` assignments applied, in that order."""
    if yaml_path is not None:
        config = with_overrides(config, load_overrides(yaml_path), source=str(yaml_path))
    if assignments:
        config = with_overrides(config, parse_assignments(assignments), source="--set")
    return config
