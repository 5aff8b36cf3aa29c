"""Altered clinical records: the same patient, with one (or more) fields changed.

Every alteration is validated against the field schema: an edit to an unknown field or to a
value the schema does not allow is an error, never silently clipped.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from persam_lib.cohort.schema import FieldSchema, is_missing

ORIGINAL = "original"


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


def parse_alteration(text: str, schema: FieldSchema) -> Alteration:
    """Parse ``field=value[;field=value...]`` and validate every edit against ``schema``."""
    edits = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        if "=" not in part:
            raise ValueError(f"alteration '{part}' must look like FIELD=VALUE, e.g. site=extranodal")
        name, raw = (s.strip() for s in part.split("=", 1))
        if name not in schema.names:
            raise ValueError(f"alteration '{part}': unknown field '{name}'. Fields are {schema.names}.")
        spec = schema[name]
        value: str | float = raw if spec.type == "categorical" else _to_float(raw, part)
        problem = spec.check(value)
        if problem:
            raise ValueError(f"alteration '{part}': {problem}. The schema allows {_allowed(spec)}.")
        edits.append((name, value))
    if not edits:
        raise ValueError(f"alteration '{text}' has no FIELD=VALUE edit")
    return Alteration(tuple(edits))


def default_alterations(schema: FieldSchema, record: pd.Series) -> list[Alteration]:
    """Every categorical field set to each of its other values (all values when it is missing)."""
    out = []
    for spec in schema.categorical():
        current = record.get(spec.name)
        for value in spec.values:
            if is_missing(current) or str(current) != value:
                out.append(Alteration(((spec.name, value),)))
    return out


def _to_float(raw: str, part: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"alteration '{part}': '{raw}' is not a number") from None


def _allowed(spec) -> str:
    if spec.type == "categorical":
        return f"one of {list(spec.values)}"
    return f"numbers between {spec.min:g} and {spec.max:g}" if spec.min is not None and spec.max is not None else "numbers"


def _format(value: str | float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
