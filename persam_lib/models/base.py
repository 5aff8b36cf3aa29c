"""What every model shares: its configuration, its input batch and its output type."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ModelConfig:
    """Every knob of the models, with defaults; saved inside each checkpoint so a run rebuilds itself.

    ``field_cardinalities`` describes the clinical record: one entry per field, the number of
    categories of a categorical field or 0 for a numeric one (see `RecordEncoder.cardinalities`).
    """

    feature_dim: int
    n_classes: int
    field_cardinalities: tuple[int, ...] = ()
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    mlp_ratio: float = 2.0
    dropout: float = 0.1
    use_position: bool = False  # add a learned embedding of each patch's (x, y) grid position
    patch_attention: str = "bipartite"  # PersAM: "bipartite" (patches <-> record and class token; linear in N) or "full" (every token to every token)
    checkpoint_activations: bool = False  # recompute Transformer blocks in backward: memory linear in bag size
    radiomics_iterations: int = 2  # ChexRadiNet: rounds of heatmap -> radiomics -> guidance
    region_fraction: float = 0.2  # ChexRadiNet: share of patches the heatmap selects as the region
    input_kind: str = "features"  # "features": bags of patch features (slides); "image": 2-D images, pixels in `Batch.images`
    image_size: int = 128  # images: side of the square model input (pixels)
    patch_size: int = 16  # images: side of a patch of the grid the attention is over (pixels of the model input)
    ehr_stages: str = "3,4"  # MMA-MGMU on images: the CNN stages (1-based, comma-separated) whose spatial attention the record steers

    def __post_init__(self) -> None:
        if self.input_kind not in ("features", "image"):
            raise ValueError(f"input_kind must be 'features' or 'image', got '{self.input_kind}'")
        if self.input_kind == "image":
            p = self.patch_size
            if p < 4 or p & (p - 1) or self.image_size % p or self.image_size < 2 * p:
                raise ValueError(f"patch_size must be a power of two >= 4 that divides image_size into at least a 2x2 grid; got patch_size={p}, image_size={self.image_size}")


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
    """

    logits: torch.Tensor
    patch_attention: torch.Tensor | None = None
    field_attention: torch.Tensor | None = None
    patch_attention_heads: torch.Tensor | None = None
    patch_attention_rollout: torch.Tensor | None = None

    def expand(self, rows: int) -> "ModelOutput":
        """The same output repeated to ``rows`` rows (a view): what an image-only model returns for
        one bag under several records, which cannot change its output."""
        grow = lambda t: t if t is None or t.shape[0] == rows else t.expand(rows, *t.shape[1:])  # noqa: E731
        return ModelOutput(*(grow(t) for t in (self.logits, self.patch_attention, self.field_attention, self.patch_attention_heads, self.patch_attention_rollout)))


def single_attention_output(logits: torch.Tensor, attention: torch.Tensor, field_attention: torch.Tensor | None = None) -> ModelOutput:
    """Output of a model whose patches pass through one attention pooling: the map is its own
    rollout and its only head."""
    return ModelOutput(logits, attention, field_attention, patch_attention_heads=attention[:, None], patch_attention_rollout=attention)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim`` that gives exactly zero weight where ``mask`` is False."""
    scores = scores.float().masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=dim).nan_to_num(0.0)
