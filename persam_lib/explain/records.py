"""Altered clinical records: the same patient, with one (or more) fields changed.

Where alterations come from:

* `default_alterations`: from the field schema alone — each categorical field set to every other
  value, each numeric field set to chosen quantiles of the cohort (`numeric_targets`, default
  10th/50th/90th percentile);
* `parse_alteration`: ``field=value[;field=value...]`` from the command line;
* `alterations_from_yaml`: several edits at once, from a file.

Every alteration is validated against the schema: an edit to an unknown field or to a value the
schema does not allow is an error naming the field and what it allows, never silently clipped.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from persam_lib.cohort.schema import FieldSchema, FieldSpec, is_missing
from persam_lib.io.yaml_files import load_yaml

ORIGINAL = "original"
DEFAULT_QUANTILES = (0.1, 0.5, 0.9)


@dataclass(frozen=True)
class Alteration:
    """A set of field edits, e.g. ``(("site", "extranodal"),)``; its label is ``site=extranodal``."""

    edits: tuple[tuple[str, str | float], ...]

    @property
    def label(self) -> str:
        return ";".join(f"{name}={_format(value)}" for name, value in self.edits)

    @property
    def fields(self) -> list[str]:
        return [name for name, _ in self.edits]

    def apply(self, record: pd.Series) -> pd.Series:
        """A copy of ``record`` with the edits applied."""
        altered = record.copy()
        for name, value in self.edits:
            altered[name] = value
        return altered


def field_of(label: str) -> str:
    """The field(s) a record label alters: ``site=nodal`` → ``site``; ``sex=F;age=30`` → ``sex;age``."""
    return ";".join(edit.split("=")[0] for edit in label.split(";"))


def validated_edit(name: str, value: Any, schema: FieldSchema, where: str) -> tuple[str, str | float]:
    """One edit checked against the schema; ``where`` (e.g. the text or file entry) is named in errors."""
    if name not in schema.names:
        raise ValueError(f"{where}: unknown field '{name}'. Fields are {schema.names}.")
    spec = schema[name]
    if spec.type == "categorical":
        value = str(value)
    else:
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: '{value}' is not a number") from None
    problem = spec.check(value)
    if problem:
        raise ValueError(f"{where}: {problem}. The schema allows {_allowed(spec)}.")
    return name, value


def parse_alteration(text: str, schema: FieldSchema) -> Alteration:
    """Parse ``field=value[;field=value...]`` and validate every edit against ``schema``."""
    edits = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        if "=" not in part:
            raise ValueError(f"alteration '{part}' must look like FIELD=VALUE, e.g. site=extranodal")
        name, raw = (s.strip() for s in part.split("=", 1))
        edits.append(validated_edit(name, raw, schema, f"alteration '{part}'"))
    if not edits:
        raise ValueError(f"alteration '{text}' has no FIELD=VALUE edit")
    return Alteration(tuple(edits))


def alterations_from_yaml(path: str | Path, schema: FieldSchema) -> list[Alteration]:
    """Alterations listed in a YAML file (`persam_lib.io.yaml_files.load_yaml`: plain YAML only), each a mapping of several edits at once.

    For example::

        alterations:
          - {site: extranodal}
          - {site: nodal, ldh: 600}
          - "sex=F;age=30"        # the command-line form works too

    Every edit is validated against the schema; errors name the file, the entry and the field.
    """
    path = Path(path)
    data = load_yaml(path, "alterations file") or {}
    entries = data.get("alterations") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty list under 'alterations:', e.g. 'alterations: [{{site: extranodal}}]'")
    out = []
    for i, entry in enumerate(entries, start=1):
        where = f"{path}, alteration {i}"
        if isinstance(entry, str):
            try:
                out.append(parse_alteration(entry, schema))
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
        elif isinstance(entry, dict) and entry:
            out.append(Alteration(tuple(validated_edit(str(k), v, schema, f"{where}, field '{k}'") for k, v in entry.items())))
        else:
            raise ValueError(f"{where}: must be a mapping of field to value (e.g. {{site: nodal, ldh: 600}}) or 'field=value;...' text")
    return out


def numeric_targets(schema: FieldSchema, records: pd.DataFrame, quantiles: Sequence[float] = DEFAULT_QUANTILES) -> dict[str, list[float]]:
    """For each numeric field, the cohort's ``quantiles`` of it (4 significant digits, duplicates dropped)."""
    if any(not 0 <= q <= 1 for q in quantiles):
        raise ValueError(f"quantiles must lie in [0, 1], got {list(quantiles)}")
    out = {}
    for spec in schema.numeric():
        column = pd.to_numeric(records[spec.name], errors="coerce").dropna()
        if column.empty:
            continue
        values = [float(f"{v:.4g}") for v in np.quantile(column.to_numpy(dtype=float), list(quantiles))]
        out[spec.name] = list(dict.fromkeys(values))
    return out


def default_alterations(schema: FieldSchema, record: pd.Series, numeric: dict[str, list[float]] | None = None) -> list[Alteration]:
    """Every categorical field set to each of its other values (all values when it is missing), and
    every numeric field in ``numeric`` (see `numeric_targets`) set to each of its target values
    other than its own."""
    out = []
    for spec in schema.fields:
        current = record.get(spec.name)
        if spec.type == "categorical":
            targets: list[str | float] = [v for v in spec.values if is_missing(current) or str(current) != v]
        else:
            targets = [v for v in (numeric or {}).get(spec.name, []) if is_missing(current) or float(current) != v]
        out.extend(Alteration(((spec.name, value),)) for value in targets)
    return out


def _allowed(spec: FieldSpec) -> str:
    if spec.type == "categorical":
        return f"one of {list(spec.values)}"
    return f"numbers between {spec.min:g} and {spec.max:g}" if spec.min is not None and spec.max is not None else "numbers"


def _format(value: str | float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
