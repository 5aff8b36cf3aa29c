"""The clinical record, from table to tokens.

`RecordEncoder` turns a table of records into the integer codes and standardised values of a
`Batch` (fitted on training patients only; its state is saved in checkpoints), and
`ClinicalTokenizer` turns those into one token per field: an embedding per category, a learned
projection of the standardised value for numeric fields, and a learned "missing" token per field.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from persam_lib.cohort.schema import FieldSchema, is_missing


@dataclass
class RecordEncoder:
    """Encodes records of a schema; numeric fields are standardised with training-set statistics."""

    schema: FieldSchema
    means: dict[str, float] = field(default_factory=dict)
    stds: dict[str, float] = field(default_factory=dict)

    def fit(self, records: pd.DataFrame) -> "RecordEncoder":
        for spec in self.schema.fields:
            if spec.type == "numeric":
                column = pd.to_numeric(records[spec.name], errors="coerce").astype(float)
                mean, std = float(column.mean()), float(column.std())
                self.means[spec.name] = 0.0 if math.isnan(mean) else mean
                self.stds[spec.name] = 1.0 if (math.isnan(std) or std < 1e-9) else std
        return self

    @property
    def cardinalities(self) -> tuple[int, ...]:
        """Per field: number of categories, or 0 for a numeric field."""
        return tuple(len(f.values) if f.type == "categorical" else 0 for f in self.schema.fields)

    def encode(self, records: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        """codes (B, F) long and values (B, F) float for the rows of ``records``."""
        n, f = len(records), len(self.schema.fields)
        codes = np.zeros((n, f), dtype=np.int64)
        values = np.zeros((n, f), dtype=np.float32)
        for j, spec in enumerate(self.schema.fields):
            column = records[spec.name].tolist()
            for i, value in enumerate(column):
                if is_missing(value):
                    continue
                if spec.type == "categorical":
                    if str(value) not in spec.values:
                        raise ValueError(f"field '{spec.name}': '{value}' is not one of {list(spec.values)}")
                    codes[i, j] = spec.values.index(str(value)) + 1
                else:
                    codes[i, j] = 1
                    values[i, j] = (float(value) - self.means[spec.name]) / self.stds[spec.name]
        return torch.from_numpy(codes), torch.from_numpy(values)

    def state(self) -> dict:
        return {"schema": self.schema.to_dict(), "means": dict(self.means), "stds": dict(self.stds)}

    @classmethod
    def from_state(cls, state: dict) -> "RecordEncoder":
        return cls(FieldSchema.from_dict(state["schema"]), dict(state["means"]), dict(state["stds"]))


class ClinicalTokenizer(nn.Module):
    """One d-dimensional token per clinical field, with a learned identity for each field."""

    def __init__(self, cardinalities: tuple[int, ...], d_model: int):
        super().__init__()
        self.cardinalities = tuple(cardinalities)
        # categorical: row 0 is the "missing" token, rows 1..k the categories
        self.embeddings = nn.ModuleList(nn.Embedding(max(k, 0) + 1, d_model) for k in self.cardinalities)
        n = len(self.cardinalities)
        self.numeric_weight = nn.Parameter(torch.randn(n, d_model) * 0.5)
        self.numeric_bias = nn.Parameter(torch.zeros(n, d_model))
        self.field_identity = nn.Parameter(torch.randn(n, d_model) * 0.02)
        self.register_buffer("is_numeric", torch.tensor([k == 0 for k in self.cardinalities], dtype=torch.bool), persistent=False)

    def forward(self, codes: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """codes, values (B, F) → tokens (B, F, d)."""
        if codes.shape[1] != len(self.cardinalities):
            raise ValueError(f"expected {len(self.cardinalities)} clinical fields, got {codes.shape[1]}")
        # numeric fields look up only their "missing" row 0; their present values are projected below
        embedded = torch.stack(
            [emb(codes[:, j] if k > 0 else torch.zeros_like(codes[:, j])) for j, (k, emb) in enumerate(zip(self.cardinalities, self.embeddings))], dim=1
        )  # (B, F, d)
        numeric = values.unsqueeze(-1) * self.numeric_weight + self.numeric_bias  # (B, F, d)
        present_numeric = (self.is_numeric & (codes > 0)).unsqueeze(-1)
        tokens = torch.where(present_numeric, numeric, embedded)  # numeric missing -> embedding row 0
        return tokens + self.field_identity
