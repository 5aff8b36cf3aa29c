"""PersAM (Takagi et al., arXiv 2206.03003): a Transformer over patch tokens and clinical-record tokens.

The sequence is [class token, one token per clinical field, one token per patch]. Attention runs
in both directions between the record and the image, so the record can change what the model looks
at and the image can change how the record is read. The attention of the class token over the
patch tokens in the last layer is the attention map (per head, and as attention rollout through all
layers on request); it changes when the record changes.

By default (``patch_attention="bipartite"``) patch tokens attend to the class and field tokens and
to themselves but not to each other: cost and memory grow linearly with the bag, and the class
token's map stays tied to each patch's own content. ``"full"`` lets every token attend to every
token. The last block updates only the class token, as nothing else reaches the classifier.

By default (``class_token_reads="record"``) the class token attends to the record's tokens and
itself only, until the last block: what it asks of the patches there — the map — is then chosen
by the record (as the record's tokens have read the slide, by the record in the light of the
slide), not by whatever the class token picked up from the patches earlier. With ``"all"`` (v1)
it reads every token in every block; on the demo cohort its map then held about half of its mass
on the diagnostic region, against about two thirds (see the book's ablation).

``record_tokens="group"`` reads the record as the published PersAM does: one token per group of
fields (the manifest's ``groups:``; a field in no group is a group of its own), each group's vector
through Linear–ReLU–Linear (`GroupTokenizer`), so both PersAMs can be compared on one record
encoding. ``field_attention`` is then None: the class token attends to groups, not to fields.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from persam_lib.models.base import Batch, ModelConfig, ModelOutput
from persam_lib.models.clinical import ClinicalTokenizer
from persam_lib.models.layers import TransformerBlock, attention_rollout, patch_embedding, renormalise
from persam_lib.models.record_groups import GroupTokenizer


class PersAM(nn.Module):
    """Personalised attention over a slide's patches and the patient's clinical record."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.patch_embed = patch_embedding(config.feature_dim, d, config.dropout)
        self.position = nn.Linear(2, d) if config.use_position else None
        if config.record_tokens == "group":
            groups = config.record_groups or tuple((j,) for j in range(len(config.field_cardinalities)))
            self.clinical = GroupTokenizer(config.field_cardinalities, groups, d) if groups else ClinicalTokenizer((), d)
            self.n_record = len(groups)
        else:
            self.clinical = ClinicalTokenizer(config.field_cardinalities, d)
            self.n_record = len(config.field_cardinalities)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.type_embed = nn.Parameter(torch.randn(3, d) * 0.02)  # class / clinical / patch token types
        bipartite = config.patch_attention == "bipartite"
        self.blocks = nn.ModuleList(TransformerBlock(d, config.n_heads, config.mlp_ratio, config.dropout, bipartite) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, config.n_classes)

    def embed_tokens(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The global tokens [class, one per field or group] (B, 1 + F, d) and the patch tokens (B, N, d).

        For one bag under B records the patch tokens are that bag's alone (1, N, d).
        """
        b = batch.n_rows
        patches = self.patch_embed(batch.features) + self.type_embed[2]  # (B, N, d)
        if self.position is not None:
            patches = patches + self.position(_normalised_positions(batch.coords, batch.patch_mask))
        fields = self.clinical(batch.codes, batch.values) + self.type_embed[1]  # (B, F, d)
        return torch.cat([self.cls_token.expand(b, -1, -1) + self.type_embed[0], fields], dim=1), patches

    def forward(self, batch: Batch, *, rollout: bool = False) -> ModelOutput:
        f = self.n_record
        globals_, patches = self.embed_tokens(batch)
        mask = batch.patch_mask
        operators = []
        sees = self.config.class_token_reads == "all"
        for block in self.blocks[:-1]:
            if rollout:
                operators.append(block.attention_operator(globals_, patches, mask, sees))
            if self.config.checkpoint_activations and self.training:
                globals_, patches = checkpoint(block, globals_, patches, mask, sees, use_reentrant=False)
            else:
                globals_, patches = block(globals_, patches, mask, sees)
        # the last block updates the class token only: the head reads nothing else
        cls, cls_attention = self.blocks[-1].forward_class_token(globals_, patches, mask)  # (B, 1, d), (B, H, 1 + F + N)
        mean_attention = cls_attention.mean(1)  # (B, 1 + F + N), averaged over heads
        return ModelOutput(
            logits=self.head(self.norm(cls[:, 0])),
            patch_attention=renormalise(mean_attention[:, 1 + f :]),
            field_attention=renormalise(mean_attention[:, 1 : 1 + f]) if self.config.record_tokens == "field" else None,
            patch_attention_heads=renormalise(cls_attention[:, :, 1 + f :]),
            patch_attention_rollout=renormalise(attention_rollout(mean_attention, operators)[:, 1 + f :]) if rollout else None,
        )


def _normalised_positions(coords: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Patch positions scaled to [0, 1] within each slide's tissue bounding box."""
    c = coords.float()
    big = torch.finfo(c.dtype).max
    lo = torch.where(mask[..., None], c, torch.full_like(c, big)).amin(1, keepdim=True)
    hi = torch.where(mask[..., None], c, torch.full_like(c, -big)).amax(1, keepdim=True)
    return (c - lo) / (hi - lo).clamp_min(1.0)
