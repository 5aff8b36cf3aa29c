"""The clinical-record schema: which fields a record has, their types and allowed values.

The schema is read from a manifest, saved inside every run and checkpoint, and used to
encode records for the models and to build altered records for the explanations, so it is
plain data (frozen dataclasses that round-trip through dicts / JSON).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

FieldType = Literal["numeric", "categorical", "text"]  # text: identifiers and free text, only with identifying: true


@dataclass(frozen=True)
class FieldSpec:
    """One clinical field: its name, type and the values it may take."""

    name: str
    type: FieldType
    values: tuple[str, ...] = ()  # categorical only, in a fixed order
    min: float | None = None  # numeric only, inclusive
    max: float | None = None
    unit: str | None = None
    identifying: bool = False  # identifying fields are never a model input and never reach the book
    permutation_of: str | None = None  # a negative control: another field's values, permuted across patients

    def check(self, value: Any) -> str | None:
        """Return a sentence saying what is wrong with ``value`` for this field, or None.

        Missing values (None, NaN, empty string) are allowed: the models have a learned
        "missing" token per field.
        """
        if is_missing(value) or self.type == "text":
            return None
        if self.type == "categorical":
            if str(value) not in self.values:
                return f"'{value}' is not one of the allowed values {list(self.values)}"
            return None
        try:
            number = float(value)
        except (TypeError, ValueError):
            return f"'{value}' is not a number"
        if math.isnan(number):
            return None
        if self.min is not None and number < self.min:
            return f"{number:g} is below the minimum {self.min:g}"
        if self.max is not None and number > self.max:
            return f"{number:g} is above the maximum {self.max:g}"
        return None


@dataclass(frozen=True)
class LabelSpec:
    """The column of the clinical table that holds the class label, and the classes in order."""

    column: str
    classes: tuple[str, ...]


@dataclass(frozen=True)
class FieldSchema:
    """All clinical fields of a cohort, in manifest order, plus the label."""

    fields: tuple[FieldSpec, ...]
    label: LabelSpec
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    groups: tuple[tuple[str, tuple[str, ...]], ...] = ()  # the manifest's `groups:`, (name, fields) in order

    def record_groups(self) -> list[tuple[str, tuple[str, ...]]]:
        """Every field in exactly one group: the manifest's groups in their order, then each field
        that is in no group as a group of its own (named after it). What a model that reads the
        record as one token per group (the published PersAM's "interview" and "blood" vectors) uses."""
        grouped = {name for _, members in self.groups for name in members}
        return [*self.groups, *((f.name, (f.name,)) for f in self.fields if f.name not in grouped)]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def __getitem__(self, name: str) -> FieldSpec:
        for spec in self.fields:
            if spec.name == name:
                return spec
        raise KeyError(f"unknown clinical field '{name}'; the schema has {self.names}")

    def categorical(self) -> list[FieldSpec]:
        return [f for f in self.fields if f.type == "categorical"]

    def numeric(self) -> list[FieldSpec]:
        return [f for f in self.fields if f.type == "numeric"]

    @property
    def negative_controls(self) -> list[str]:
        """Fields made by permuting another field across patients: a model should ignore them."""
        return [f.name for f in self.fields if f.permutation_of]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the same shape as the manifest's `fields` and `label` keys)."""
        out = {
            "label": {"column": self.label.column, "classes": list(self.label.classes)},
            "fields": {
                f.name: {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(f).items() if k != "name"}
                for f in self.fields
            },
        }
        if self.groups:
            out["groups"] = {name: list(members) for name, members in self.groups}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FieldSchema":
        label = LabelSpec(column=data["label"]["column"], classes=tuple(str(c) for c in data["label"]["classes"]))
        fields = tuple(
            FieldSpec(
                name=name,
                type=spec["type"],
                values=tuple(str(v) for v in spec.get("values") or ()),
                min=spec.get("min"),
                max=spec.get("max"),
                unit=spec.get("unit"),
                identifying=bool(spec.get("identifying", False)),
                permutation_of=spec.get("permutation_of"),
            )
            for name, spec in data["fields"].items()
        )
        groups = tuple((str(name), tuple(str(m) for m in members)) for name, members in (data.get("groups") or {}).items())
        return cls(fields=fields, label=label, groups=groups)


def is_missing(value: Any) -> bool:
    """True for the spellings of a missing value in a clinical table."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() == ""
