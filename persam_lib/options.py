"""Setting a configuration dataclass from text: ``--set name=value`` on the command line, or a YAML file.

Instead of one command-line flag per knob, every field of a configuration dataclass (such as
`persam_lib.train.loop.TrainConfig`) can be set by name. A field that is itself a dataclass (a
part with its own owner, such as ``TrainConfig.model_settings``) is set through its fields' names,
so the names stay flat: ``--set lr=1e-3`` reaches the training knob, ``--set d_model=32`` the
model setting. Values are converted to the field's type, and an unknown name or a value of the
wrong type is an error that says what is expected and lists the valid names. A name a dataclass
has renamed (its ``RENAMED`` mapping) is accepted with a deprecation message, printed once.
"""
from __future__ import annotations

import dataclasses
import typing
import warnings
from pathlib import Path
from typing import Any, TypeVar


from persam_lib.io.yaml_files import load_yaml

C = TypeVar("C")

_TRUE, _FALSE = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}
_EXPECTED = {bool: "true or false", int: "an int", float: "a float", str: "a string"}


def _field_types(config: Any) -> dict[str, type]:
    hints = typing.get_type_hints(type(config))
    return {f.name: hints[f.name] for f in dataclasses.fields(config)}


def _parts(config: Any) -> dict[str, tuple[str | None, type]]:
    """Every settable name of ``config`` → (the nested part's field name or None for the top level,
    the value's type); a nested dataclass field contributes its own fields' names, not its own."""
    out: dict[str, tuple[str | None, type]] = {}
    for name, kind in _field_types(config).items():
        value = getattr(config, name)
        if dataclasses.is_dataclass(value):
            out.update({inner: (name, inner_kind) for inner, inner_kind in _field_types(value).items()})
        else:
            out[name] = (None, kind)
    return out


def _renamed(config: Any) -> dict[str, str]:
    """Old name → new name, over ``config`` and its nested parts (each dataclass's ``RENAMED``)."""
    out = dict(getattr(type(config), "RENAMED", {}))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.update(getattr(type(value), "RENAMED", {}))
    return out


def _listing(config: Any, parts: dict[str, tuple[str | None, type]], values: bool = False) -> str:
    """The valid names (with ``values``: NAME=VALUE), grouped by owner:
    "model, n_folds, ...; model settings (ModelSettings): d_model, ..."."""
    groups: dict[str | None, list[str]] = {}
    for name, (part, _) in parts.items():
        value = getattr(config if part is None else getattr(config, part), name)
        groups.setdefault(part, []).append(f"{name}={_text(value)}" if values else name)
    text = ", ".join(groups.pop(None, []))
    for part, names in groups.items():
        text += f"; {part.replace('_', ' ')} ({type(getattr(config, part)).__name__}): {', '.join(names)}"
    return text


def _text(value: Any) -> str:
    """A value as it is written after ``--set NAME=``."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def describe(config: Any) -> str:
    """Every name ``with_overrides`` accepts on ``config``, as NAME=VALUE with the current values
    (for a default-constructed config: the dataclasses' defaults), grouped by owner: what
    ``persam train --help`` shows, so the help never restates a default by hand."""
    return _listing(config, _parts(config), values=True)


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

    Names of a nested dataclass's fields replace them in that part (see the module docstring).
    ``source`` (a file name, say) is named in errors. Validation in each dataclass's
    ``__post_init__`` runs on the result.
    """
    parts = _parts(config)
    owner = type(config).__name__
    where = f"{source}: " if source else ""
    try:
        overrides = _new_names(overrides, _renamed(config))
        changes: dict[str | None, dict[str, Any]] = {}
        for name, value in overrides.items():
            if name not in parts:
                raise ValueError(f"unknown {owner} option '{name}'. Options are: {_listing(config, parts)}.")
            part, kind = parts[name]
            changes.setdefault(part, {})[name] = _convert(name, value, kind, owner)
        top = changes.pop(None, {})
        for part, fields in changes.items():
            top[part] = dataclasses.replace(getattr(config, part), **fields)
        return dataclasses.replace(config, **top)
    except ValueError as err:
        raise ValueError(f"{where}{err}") from None


def _new_names(overrides: dict[str, Any], renamed: dict[str, str]) -> dict[str, Any]:
    """``overrides`` with renamed options under their new names; each old name used prints a
    deprecation message, once (Python shows the same FutureWarning once per calling line)."""
    out = dict(overrides)
    for old, new in renamed.items():
        if old not in out:
            continue
        if new in out:
            raise ValueError(f"both '{old}' (the old name of '{new}') and '{new}' are set; keep '{new}' only")
        warnings.warn(f"the option '{old}' is now called '{new}'; '{old}' still works for now but will be removed: write {new} in --set and --config files", FutureWarning, stacklevel=4)
        out[new] = out.pop(old)
    return out


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
