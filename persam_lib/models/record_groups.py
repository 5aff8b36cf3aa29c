"""The clinical record as one token per *group* of fields (the published PersAM's record vectors).

The authors feed two record vectors — an "interview" group of 18 values and a "blood" group of
10 — each through Linear–ReLU–Linear to the model width. `GroupVectors` builds such a vector per
group from a `Batch`'s codes and values (as `RecordEncoder` makes them): a categorical field
becomes its one-hot categories plus a missing flag, a numeric field its standardised value plus a
missing flag (0 where missing). `GroupTokenizer` maps each group's vector to a d-dimensional token.
Which fields form which group comes from the manifest (`FieldSchema.record_groups`).
"""
from __future__ import annotations

import torch
from torch import nn


def group_indices(field_names: list[str], groups: list[tuple[str, tuple[str, ...]]]) -> tuple[tuple[int, ...], ...]:
    """The field positions of each group (``groups`` from `FieldSchema.record_groups`)."""
    position = {name: i for i, name in enumerate(field_names)}
    missing = [m for _, members in groups for m in members if m not in position]
    if missing:
        raise ValueError(f"record groups name fields {missing} that the record does not have ({field_names})")
    return tuple(tuple(position[m] for m in members) for _, members in groups)


def group_width(cardinalities: tuple[int, ...], members: tuple[int, ...]) -> int:
    """Length of one group's vector: k + 1 per categorical field of k values, 2 per numeric field."""
    return sum(cardinalities[j] + 1 if cardinalities[j] > 0 else 2 for j in members)


class GroupVectors(nn.Module):
    """codes, values (B, F) → one vector per group, zero-padded to the widest group: (B, G, W)."""

    def __init__(self, cardinalities: tuple[int, ...], groups: tuple[tuple[int, ...], ...]):
        super().__init__()
        self.cardinalities = tuple(cardinalities)
        self.groups = tuple(tuple(g) for g in groups)
        self.widths = tuple(group_width(self.cardinalities, g) for g in self.groups)

    def forward(self, codes: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        if codes.shape[1] != len(self.cardinalities):
            raise ValueError(f"expected {len(self.cardinalities)} clinical fields, got {codes.shape[1]}")
        width = max(self.widths)
        out = values.new_zeros(codes.shape[0], len(self.groups), width)
        for g, members in enumerate(self.groups):
            parts = []
            for j in members:
                k = self.cardinalities[j]
                missing = (codes[:, j] == 0).to(values.dtype)[:, None]
                if k > 0:  # one-hot over the k categories (code c+1 -> column c), then the missing flag
                    parts += [nn.functional.one_hot(codes[:, j].clamp_min(1) - 1, k).to(values.dtype) * (1 - missing), missing]
                else:
                    parts += [values[:, j : j + 1] * (1 - missing), missing]
            vector = torch.cat(parts, dim=1)
            out[:, g, : vector.shape[1]] = vector
        return out


class GroupTokenizer(nn.Module):
    """One d-dimensional token per record group: the group's vector through Linear–ReLU–Linear
    (the release's ``MLP_fc1``: width → d/2 → d), one small network per group."""

    def __init__(self, cardinalities: tuple[int, ...], groups: tuple[tuple[int, ...], ...], d_model: int):
        super().__init__()
        self.vectors = GroupVectors(cardinalities, groups)
        hidden = max(d_model // 2, 1)
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(w, hidden), nn.ReLU(), nn.Linear(hidden, d_model)) for w in self.vectors.widths)

    def forward(self, codes: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """codes, values (B, F) → tokens (B, G, d)."""
        vectors = self.vectors(codes, values)
        return torch.stack([mlp(vectors[:, g, :w]) for g, (mlp, w) in enumerate(zip(self.mlps, self.vectors.widths))], dim=1)
