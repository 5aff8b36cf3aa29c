"""What every model shares: its settings and configuration, its input batch and its output type.

`ModelSettings` holds every model knob a user sets (``--set d_model=32``), with its default, and
checks each value once. `ModelConfig` is those settings plus what the data decides (feature
dimension, classes, clinical fields, input kind): the one type a model reads and a checkpoint
stores, so a saved run rebuilds itself.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch


@dataclass(frozen=True)
class ModelSettings:
    """Every model setting a user chooses, with its default; each value is checked here, once.

    Not every model reads every setting: the registry (`persam_lib.models.MODEL_INFO`) says which
    settings each model reads, and training refuses a changed setting the chosen model ignores.
    """

    d_model: int = 64  # width of the patch and record embeddings
    n_heads: int = 4  # attention heads (Transformers, MMA-MGMU's fusion)
    n_layers: int = 2  # PersAM: Transformer blocks
    mlp_ratio: float = 2.0  # Transformers: hidden width of the feed-forward layer, in multiples of d_model
    dropout: float = 0.1
    use_position: bool = False  # PersAM: add a learned embedding of each patch's (x, y) grid position
    patch_attention: str = "bipartite"  # PersAM: "bipartite" (patches <-> record and class token; linear in N) or "full" (every token to every token)
    checkpoint_activations: bool = False  # PersAM: recompute Transformer blocks in backward, memory linear in bag size
    radiomics_iterations: int = 2  # ChexRadiNet: rounds of heatmap -> radiomics -> guidance
    region_fraction: float = 0.2  # ChexRadiNet: share of patches the heatmap selects as the region
    image_size: int = 128  # 2-D images: side of the square model input, in pixels (images are letterboxed into it)
    grid_cell: int = 16  # 2-D images: side of a cell of the grid the attention is over, in model-input pixels (a power of two)
    ehr_stages: str = "3,4"  # MMA-MGMU on 2-D images: the CNN stages (1-based, comma-separated) whose spatial attention the record steers
    norm: str = "post"  # persam_paper: "post" (LayerNorm after each residual, as released) or "pre"
    class_token_reads: str = "record"  # PersAM: before the last block the class token attends to the "record" tokens (and itself) only, or to "all" tokens (v1)
    record_tokens: str = "field"  # PersAM: one token per clinical "field", or one per record "group" (the manifest's groups:, as the published PersAM)

    RENAMED: ClassVar[dict[str, str]] = {"patch_size": "grid_cell"}  # old name -> new name, still accepted (with a deprecation message)

    def __post_init__(self) -> None:
        p = self.grid_cell
        checks = [
            ("d_model", self.d_model >= 1 and self.d_model % max(self.n_heads, 1) == 0, f"an int divisible by n_heads ({self.n_heads})"),
            ("n_heads", self.n_heads >= 1, "an int >= 1"),
            ("n_layers", self.n_layers >= 1, "an int >= 1"),
            ("mlp_ratio", self.mlp_ratio > 0, "a float > 0"),
            ("dropout", 0 <= self.dropout < 1, "a float in [0, 1)"),
            ("patch_attention", self.patch_attention in ("bipartite", "full"), "'bipartite' or 'full'"),
            ("radiomics_iterations", self.radiomics_iterations >= 1, "an int >= 1"),
            ("region_fraction", 0 < self.region_fraction <= 1, "a float in (0, 1]"),
            ("norm", self.norm in ("post", "pre"), "'post' or 'pre'"),
            ("record_tokens", self.record_tokens in ("field", "group"), "'field' or 'group'"),
            ("class_token_reads", self.class_token_reads in ("all", "record"), "'all' or 'record'"),
            ("grid_cell", p >= 4 and p & (p - 1) == 0, "a power of two >= 4"),
            ("image_size", self.image_size >= 2 * p and self.image_size % p == 0, f"a multiple of grid_cell ({p}), at least twice it"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"The model setting '{name}' must be {expected}. Got {getattr(self, name)!r} instead.")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The settings' names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(ModelSettings))

    def changed(self) -> dict[str, Any]:
        """The settings whose value differs from the default, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ModelSettings) if getattr(self, f.name) != f.default}

    def settings(self) -> "ModelSettings":
        """The model settings alone (of a `ModelConfig`: without what the data decides)."""
        return ModelSettings(**{name: getattr(self, name) for name in self.names()})

    @classmethod
    def upgrade_names(cls, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` (a stored config.json or checkpoint) with old setting names replaced by the
        current ones (`RENAMED`); what this code wrote before a rename keeps loading."""
        data = dict(data)
        for old, new in cls.RENAMED.items():
            if old in data:
                value = data.pop(old)
                if new in data and data[new] != value:
                    raise ValueError(f"both '{old}' (the old name) and '{new}' are given, with different values ({value!r}, {data[new]!r}); keep '{new}' only")
                data.setdefault(new, value)
        return data


@dataclass(frozen=True, kw_only=True)
class ModelConfig(ModelSettings):
    """The model settings plus what the data decides: the one type every model reads, saved
    inside each checkpoint so a run rebuilds itself.

    ``field_cardinalities`` describes the clinical record: one entry per field, the number of
    categories of a categorical field or 0 for a numeric one (see `RecordEncoder.cardinalities`).
    """

    feature_dim: int  # patch-feature dimension (slides) or image channels (images)
    n_classes: int
    field_cardinalities: tuple[int, ...] = ()
    input_kind: str = "features"  # "features": bags of patch features (slides); "image": 2-D images, pixels in `Batch.images`
    record_groups: tuple[tuple[int, ...], ...] = ()  # field positions of each record group (`FieldSchema.record_groups`); () = one per field

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.input_kind not in ("features", "image"):
            raise ValueError(f"input_kind must be 'features' or 'image', got '{self.input_kind}'")

    @classmethod
    def from_settings(
        cls, settings: ModelSettings, *, feature_dim: int, n_classes: int, field_cardinalities: tuple[int, ...] = (), input_kind: str = "features", record_groups: tuple[tuple[int, ...], ...] = ()
    ) -> "ModelConfig":
        """The configuration of a model with ``settings`` on data of this shape (copied by field name)."""
        groups = tuple(tuple(int(j) for j in g) for g in record_groups)
        return cls(**{name: getattr(settings, name) for name in ModelSettings.names()}, feature_dim=feature_dim, n_classes=n_classes, field_cardinalities=tuple(field_cardinalities), input_kind=input_kind, record_groups=groups)

    def to_dict(self) -> dict[str, Any]:
        """Plain values by name, as a checkpoint stores them."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """A configuration stored by `to_dict`, also by an older version (old setting names are mapped)."""
        data = cls.upgrade_names(data)
        data["field_cardinalities"] = tuple(data.get("field_cardinalities", ()))
        data["record_groups"] = tuple(tuple(g) for g in data.get("record_groups", ()))
        return cls(**data)


@dataclass
class Batch:
    """A padded batch of bags with their clinical records.

    features (B, N, D) float; patch_mask (B, N) bool, True where a patch is real (not padding);
    coords (B, N, 2) long top-left corners (a slide's level-0 pixels; inside an image model, the
    model input's pixels); codes (B, F) long — category index + 1, or 1 for a
    present numeric value, 0 for missing; values (B, F) float — standardised numeric values, 0
    elsewhere.

    For 2-D images ``images`` (B, C, S, S) holds the normalised pixels and the bag tensors are empty
    (N = 0): image models cut the picture into their own grid of patches (`Batch.of_images`).

    *One bag under K records*: features, patch_mask and coords (or images) may hold a single bag
    (leading size 1) while codes and values hold K records. Every model then returns K rows, computing what does
    not depend on the record (at least the patch embedding) once — how altered records are
    explained without repeating the bag K times.
    """

    features: torch.Tensor
    patch_mask: torch.Tensor
    coords: torch.Tensor
    codes: torch.Tensor
    values: torch.Tensor
    images: torch.Tensor | None = None

    @classmethod
    def of_images(cls, images: torch.Tensor, codes: torch.Tensor, values: torch.Tensor) -> "Batch":
        """A batch of images (B, C, S, S) with their records; the bag tensors are empty."""
        b, device = images.shape[0], images.device
        return cls(images.new_zeros(b, 0, 0), torch.zeros(b, 0, dtype=torch.bool, device=device), torch.zeros(b, 0, 2, dtype=torch.long, device=device), codes, values, images)

    @property
    def n_rows(self) -> int:
        """Rows of the output: the number of records (equal to the number of bags, or K for one shared bag)."""
        return self.codes.shape[0]

    def to(self, device: torch.device | str) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(*(move(t) for t in (self.features, self.patch_mask, self.coords, self.codes, self.values, self.images)))


@dataclass
class ModelOutput:
    """The output every model returns.

    logits (B, C); patch_attention (B, N), summing to 1 over each bag's real patches (None for
    models without patch attention) — for Transformers the class token's attention in the last
    layer, averaged over heads; field_attention (B, F), summing to 1 (None for models that do not
    attend over clinical fields).

    patch_attention_heads (B, H, N): the same map per head, each summing to 1 (one "head" for
    models with a single attention pooling). patch_attention_rollout (B, N): attention rollout
    through all layers, filled when the model is called with ``rollout=True``; for a model whose
    patches pass through a single attention step it is the patch attention itself.

    class_patch_attention (B, C, N): one map per class, for models that have them (the published
    PersAM's aggregator: values in [0, 1], not normalised; what its attention loss reads).
    """

    logits: torch.Tensor
    patch_attention: torch.Tensor | None = None
    field_attention: torch.Tensor | None = None
    patch_attention_heads: torch.Tensor | None = None
    patch_attention_rollout: torch.Tensor | None = None
    class_patch_attention: torch.Tensor | None = None

    def expand(self, rows: int) -> "ModelOutput":
        """The same output repeated to ``rows`` rows (a view): what an image-only model returns for
        one bag under several records, which cannot change its output."""
        grow = lambda t: t if t is None or t.shape[0] == rows else t.expand(rows, *t.shape[1:])  # noqa: E731
        return ModelOutput(*(grow(t) for t in (self.logits, self.patch_attention, self.field_attention, self.patch_attention_heads, self.patch_attention_rollout, self.class_patch_attention)))


def single_attention_output(logits: torch.Tensor, attention: torch.Tensor, field_attention: torch.Tensor | None = None) -> ModelOutput:
    """Output of a model whose patches pass through one attention pooling: the map is its own
    rollout and its only head."""
    return ModelOutput(logits, attention, field_attention, patch_attention_heads=attention[:, None], patch_attention_rollout=attention)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim`` that gives exactly zero weight where ``mask`` is False."""
    scores = scores.float().masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=dim).nan_to_num(0.0)
