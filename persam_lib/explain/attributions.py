"""Gradient and game-theoretic attributions, to read attention against: captum Integrated Gradients
for patch features and clinical tokens, and SHAP values for clinical fields with the image fixed.

* **Integrated Gradients** (Sundararajan et al. 2017, captum): from a baseline — the mean patch
  (standardised features all zero; for a 2-D image, the mean image: standardised pixels all zero) and, for each clinical field, its mean token over the cohort's
  records ("a typical patient": the missing-value token would do only for fields that were
  missing in training, else it is untrained) — to the slide and its record. Per patch, the attributions summed over feature dimensions; per
  field, summed over the token's dimensions. Completeness: all attributions sum to the logit's
  change from baseline to input, up to the integral's error (``delta``). For a 2-D image the
  pixels' attributions are summed over each cell of the patch grid the attention is over.
* **SHAP** (KernelExplainer): each clinical field's contribution to the predicted class's
  probability, the slide's features held fixed, against a background of cohort records; fields
  are replaced by background values, so "absent" means "a typical patient's value".
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from tqdm import tqdm

from persam_lib.cohort.manifest import Cohort
from persam_lib.cohort.schema import FieldSchema, is_missing
from persam_lib.explain.attention import check_run_matches, records_output
from persam_lib.models import MODEL_INFO
from persam_lib.models.base import Batch
from persam_lib.models.clinical import ClinicalTokenizer
from persam_lib.train.checkpoint import LoadedModel
from persam_lib.train.data import Bag, ImageInput, collate_records, load_sample
from persam_lib.train.run import Run


@dataclass
class IGResult:
    """Integrated Gradients of one slide: per patch (N,), per field (F,) or None for image-only models."""

    patches: np.ndarray
    fields: np.ndarray | None
    delta: float  # completeness error: |sum of attributions − (logit(input) − logit(baseline))|
    logit_change: float  # logit(input) − logit(baseline)
    target: int
    steps: int  # integration steps used


def integrated_gradients(
    loaded: LoadedModel, bag: Bag, record: pd.Series, background: pd.DataFrame, target: int | None = None,
    steps: int = 64, tolerance: float = 0.01, max_steps: int = 1024, internal_batch_size: int = 16,
) -> IGResult:
    """Integrated Gradients of the ``target`` class's logit (default: the predicted class) for one slide or image.

    ``background``: records whose mean clinical tokens are the baseline of the record side. The
    number of integration steps starts at ``steps`` and doubles (up to ``max_steps``) until the
    attributions add up to the logit's change within ``tolerance`` of it (completeness): attention
    can make the path sharp, and a fixed step count then silently misattributes.
    """
    from captum.attr import IntegratedGradients

    model = loaded.model.eval()
    device = next(model.parameters()).device
    batch = collate_records(bag, pd.DataFrame([record]), loaded.record_encoder, loaded.normaliser).to(device)
    reads_record = MODEL_INFO[loaded.name].reads_record
    clinical = next((m for m in model.modules() if isinstance(m, ClinicalTokenizer)), None)
    if target is None:
        with torch.no_grad():
            target = int(model(batch).logits.argmax(-1))
    image = batch.images if batch.images is not None else batch.features  # what IG integrates on the image side

    def logits(image_in: torch.Tensor, tokens_in: torch.Tensor | None = None) -> torch.Tensor:
        rows = image_in.shape[0]
        codes, values = batch.codes.expand(rows, -1), batch.values.expand(rows, -1)
        if batch.images is not None:
            expanded = Batch.of_images(image_in, codes, values)
        else:
            expanded = Batch(image_in, batch.patch_mask.expand(rows, -1), batch.coords.expand(rows, -1, -1), codes, values)
        if tokens_in is None:
            return model(expanded).logits
        handle = clinical.register_forward_hook(lambda module, args, output: tokens_in)  # the tokens IG interpolates
        try:
            return model(expanded).logits
        finally:
            handle.remove()

    ig = IntegratedGradients(logits)
    if reads_record:
        with torch.no_grad():
            tokens = clinical(batch.codes, batch.values)  # (1, F, d)
            typical = clinical(*(t.to(device) for t in loaded.record_encoder.encode(background))).mean(0, keepdim=True)
        inputs, baselines = (image, tokens), (torch.zeros_like(image), typical)
    else:
        inputs, baselines = (image,), (torch.zeros_like(image),)
    with torch.no_grad():
        change = float(logits(*inputs)[0, target] - logits(*baselines)[0, target])
    while True:
        attributions, delta = ig.attribute(inputs, baselines=baselines, target=target, n_steps=steps, internal_batch_size=internal_batch_size, return_convergence_delta=True)
        gap = float(delta.abs().max())
        if gap <= tolerance * abs(change) + 1e-4 or steps >= max_steps:
            break
        steps *= 2
    return IGResult(
        patches=_per_patch(attributions[0][0].detach(), loaded.config.grid_cell if batch.images is not None else 0).cpu().numpy(),
        fields=attributions[1][0].sum(-1).detach().cpu().numpy() if reads_record else None,
        delta=gap,
        logit_change=change,
        target=target,
        steps=steps,
    )


def _per_patch(attributions: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Attributions of one input summed per patch: over feature dimensions (N, D) → (N,), or for
    an image (C, S, S) over channels and the pixels of each cell of the patch grid (row-major)."""
    if patch_size == 0:
        return attributions.sum(-1)
    c, s, _ = attributions.shape
    g = s // patch_size
    return attributions.sum(0).reshape(g, patch_size, g, patch_size).sum((1, 3)).reshape(-1)


def encode_fields(records: pd.DataFrame, schema: FieldSchema) -> np.ndarray:
    """Records as numbers for SHAP: category index for categorical fields, the value for numeric ones, NaN if missing."""
    out = np.full((len(records), len(schema.fields)), np.nan)
    for j, spec in enumerate(schema.fields):
        for i, value in enumerate(records[spec.name].tolist()):
            if not is_missing(value):
                out[i, j] = spec.values.index(str(value)) if spec.type == "categorical" else float(value)
    return out


def decode_fields(encoded: np.ndarray, schema: FieldSchema) -> pd.DataFrame:
    """The inverse of `encode_fields`."""
    columns = {}
    for j, spec in enumerate(schema.fields):
        column = encoded[:, j]
        if spec.type == "categorical":
            columns[spec.name] = [None if np.isnan(v) else spec.values[int(round(v))] for v in column]
        else:
            columns[spec.name] = column.astype(float)
    return pd.DataFrame(columns)


def shap_fields(loaded: LoadedModel, bag: Bag, record: pd.Series, background: pd.DataFrame, schema: FieldSchema, target: int) -> np.ndarray:
    """SHAP values (F,) of the clinical fields for the ``target`` class's probability, the slide (or image) fixed.

    Every coalition of fields is evaluated in one batch in which the slide is stored once.
    """
    import shap

    device = next(loaded.model.parameters()).device

    def probability(encoded: np.ndarray) -> np.ndarray:
        out = records_output(loaded, bag, decode_fields(np.atleast_2d(encoded), schema), device)
        return torch.softmax(out.logits.float(), -1)[:, target].cpu().numpy()

    explainer = shap.KernelExplainer(probability, encode_fields(background, schema), link="identity")
    values = explainer.shap_values(encode_fields(pd.DataFrame([record]), schema), nsamples=2 ** len(schema.fields) + 2 * len(schema.fields), silent=True)
    return np.asarray(values).reshape(-1)[: len(schema.fields)]


@dataclass
class Attributions:
    """Per slide: IG-vs-attention rank correlation and IG per field (``slides``); SHAP per slide and field (``shap``)."""

    slides: pd.DataFrame
    shap: pd.DataFrame
    field_values: pd.DataFrame  # the encoded record of each slide's patient (SHAP's colour scale)


def attribute_run(run: Run, cohort: Cohort, features_dir: str | Path | None, slides: list[str] | None = None, *, background_size: int = 16, steps: int = 32, seed: int = 0, progress: bool = True) -> Attributions:
    """IG and SHAP for every slide (or ``slides``), each with the fold model that did not train on its
    patient; a patient the run never saw (`run_patients`: on any cohort but the run's own) with the
    first fold's model, as integrated gradients attribute one model's output."""
    from persam_lib.explain.attention import run_patients

    check_run_matches(run, cohort)
    folds = run_patients(run, cohort)
    records = cohort.records()
    schema = cohort.schema
    table = cohort.slides if slides is None else cohort.slides[cohort.slides["slide_id"].isin(slides)]
    background = records.sample(min(background_size, len(records)), random_state=seed)
    loaded: dict[int, LoadedModel] = {}
    rows = cohort.sample_rows()
    slide_rows, shap_rows, value_rows = [], [], []
    reads_record = MODEL_INFO[run.config.model].reads_record
    for row in tqdm(list(table.itertuples()), desc="attributions", disable=not progress):
        fold = int(folds.get(row.patient_id, 0))
        if fold not in loaded:
            loaded[fold] = run.model_for_fold(fold)
        bag = load_sample(cohort, row.slide_id, features_dir, ImageInput.of(loaded[fold].config), rows)
        record = records.loc[row.patient_id]
        result = integrated_gradients(loaded[fold], bag, record, records, steps=steps)
        attention = records_output(loaded[fold], bag, pd.DataFrame([record])).patch_attention[0].cpu().numpy()
        rho = spearmanr(attention, np.abs(result.patches)).statistic if len(attention) > 2 else float("nan")
        out = {"slide_id": row.slide_id, "target": run.classes[result.target], "ig_attention_spearman": float(rho), "ig_delta": result.delta, "logit_change": result.logit_change, "ig_steps": result.steps}
        if result.fields is not None:
            out.update({f"ig_{name}": float(v) for name, v in zip(schema.names, result.fields)})
        slide_rows.append(out)
        if reads_record:
            values = shap_fields(loaded[fold], bag, record, background, schema, result.target)
            shap_rows.append({"slide_id": row.slide_id, **dict(zip(schema.names, values))})
            value_rows.append({"slide_id": row.slide_id, **dict(zip(schema.names, encode_fields(pd.DataFrame([record]), schema)[0]))})
    return Attributions(pd.DataFrame(slide_rows), pd.DataFrame(shap_rows), pd.DataFrame(value_rows))
