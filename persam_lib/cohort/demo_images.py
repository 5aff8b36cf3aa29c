"""The demo cohort of 2-D images: generated chest radiographs, a clinical table and ground truth.

Designed like the slide cohort (`persam_lib.cohort.demo`), for the modality the fusion models
were built for. Every radiograph shows a solid *nodule* and a ground-glass *opacity*
(`demo_radiograph`), each of phenotype A (homogeneous) or B (mottled, same mean density). The categorical field ``presentation`` says which lesion
decides the label: ``focal`` → the nodule, ``diffuse`` → the opacity; the label ``finding`` is
``benign`` when the deciding lesion is homogeneous and ``malignant`` when it is mottled. In about
half of the patients the two lesions disagree, so an image-only model is right in at most ~75%,
a model that reads the record in all — and for every record the ground truth says which lesion its
attention should be on. ``age`` and ``sex`` are noise; ``crp`` is weakly informative (higher in
malignant findings) with some values missing; ``presentation_permuted`` is the negative control;
``mrn`` is a made-up identifier marked identifying.

Images are written as 12-bit DX DICOM files with their display window in the header; every fifth
image is a 16-bit PNG instead, whose window is given in the image table (``window_center``,
``window_width``) — both ways a real cohort arrives.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from persam_lib.io.atomic import atomic_path, write_text_atomic
from persam_lib.cohort.demo import made_up_mrns, write_manifest
from persam_lib.cohort.demo_radiograph import REGION_LABELS, RadiographDesign, render_radiograph
from persam_lib.cohort.truth import MASKS_DIR, TRUTH_FILE, mask_file, write_truth
from persam_lib.images.reader import Window
from persam_lib.images.writer import write_dicom

DECIDING_FIELD = "presentation"
DIAGNOSTIC_REGION = {"focal": "nodule", "diffuse": "opacity"}
NOISE_FIELDS = ("age", "sex")
FINDING = {"A": "benign", "B": "malignant"}  # phenotype of the deciding lesion -> label
WINDOW = Window(center=2048.0, width=4096.0)  # the renderer's 12-bit range


@dataclass(frozen=True)
class RadiographCohortConfig:
    """Size and seed of the generated radiograph cohort; the defaults keep the book's chapter within minutes on 2 CPUs."""

    patients: int = 160
    seed: int = 0
    size: int = 256  # pixels per side
    lesion_radius: int = 22  # nodule radius in pixels
    disagree_fraction: float = 0.5
    png_every: int = 5  # every n-th image is a 16-bit PNG (0: all DICOM)


def make_radiograph_cohort(out: str | Path, config: RadiographCohortConfig = RadiographCohortConfig(), *, progress: bool = True) -> Path:
    """Generate the radiograph cohort in ``out`` and return the path of its manifest.

    Resumable like the slide cohort: images already written are kept; tables and manifest are
    written last, atomically. The result depends only on ``config`` (each image has its own seed).
    """
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "truth" / MASKS_DIR).mkdir(parents=True, exist_ok=True)
    table = _design_patients(config, np.random.default_rng(config.seed))
    is_png = [config.png_every > 0 and (i + 1) % config.png_every == 0 for i in range(len(table))]
    table["path"] = [f"images/{s}.png" if png else f"images/{s}.dcm" for s, png in zip(table.image_id, is_png)]
    for row in tqdm(list(table.itertuples()), desc="demo radiographs", disable=not progress):
        image_path, mask_path = out / row.path, mask_file(out / "truth", row.image_id)
        if image_path.exists() and mask_path.exists():
            continue
        design = RadiographDesign(config.size, row.nodule_phenotype, row.opacity_phenotype, config.lesion_radius)
        pixels, mask = render_radiograph(design, np.random.default_rng([config.seed, int(row.image_id[1:])]))
        if image_path.suffix == ".png":
            with atomic_path(image_path) as tmp:
                Image.fromarray(pixels.astype(np.uint16)).save(tmp, format="PNG")
        else:
            write_dicom(image_path, pixels, window=WINDOW, patient_id=row.patient_id)
        with atomic_path(mask_path) as tmp:
            Image.fromarray(mask).save(tmp, format="PNG")

    images = table[["image_id", "patient_id", "path"]].assign(
        window_center=[WINDOW.center if png else "" for png in is_png], window_width=[WINDOW.width if png else "" for png in is_png]
    )
    table["mrn"] = made_up_mrns(len(table), [config.seed, 2])  # another stream than the slide cohort's: no MRN in both
    clinical = table[["patient_id", "mrn", "age", "sex", "presentation", "crp", "finding"]]
    regions = table[["image_id", "patient_id", "nodule_phenotype", "opacity_phenotype", "disagree"]].rename(columns={"image_id": "slide_id"})
    write_text_atomic(out / "images.csv", images.to_csv(index=False))
    write_text_atomic(out / "clinical.csv", clinical.to_csv(index=False, na_rep=""))
    write_truth(out / "truth", regions, mask_downsample=1, labels=REGION_LABELS, deciding_field=DECIDING_FIELD, diagnostic_region=DIAGNOSTIC_REGION, noise_fields=NOISE_FIELDS)
    manifest = {
        "cohort": "demo-radiographs",
        "images": "images.csv",
        "clinical": "clinical.csv",
        "label": {"column": "finding", "classes": ["benign", "malignant"]},
        "fields": {
            "mrn": {"type": "text", "identifying": True},
            "age": {"type": "numeric", "min": 0, "max": 120, "unit": "years"},
            "sex": {"type": "categorical", "values": ["F", "M"]},
            "presentation": {"type": "categorical", "values": ["focal", "diffuse"]},
            "crp": {"type": "numeric", "min": 0, "max": 500, "unit": "mg/L"},
            "presentation_permuted": {"type": "categorical", "values": ["focal", "diffuse"], "permutation_of": "presentation"},
        },
        "truth": f"truth/{TRUTH_FILE}",
    }
    return write_manifest(out, manifest, {"kind": "radiograph", **asdict(config)})


def _design_patients(config: RadiographCohortConfig, rng: np.random.Generator) -> pd.DataFrame:
    """One row per patient: record, label, and the phenotype of each lesion."""
    n = config.patients
    if n < 4:
        raise ValueError(f"The demo cohort needs at least 4 patients, got {n}.")
    phenotype = np.array(["A", "B"] * (n // 2) + ["A"] * (n % 2))
    rng.shuffle(phenotype)
    presentation = rng.choice(["focal", "diffuse"], size=n)
    disagree = rng.random(n) < config.disagree_fraction
    other = np.where(disagree, np.where(phenotype == "A", "B", "A"), phenotype)
    nodule = np.where(presentation == "focal", phenotype, other)
    opacity = np.where(presentation == "focal", other, phenotype)
    crp = np.clip(rng.lognormal(np.where(phenotype == "B", 3.4, 3.0), 0.6), 0.5, 400).round(1)
    crp_missing = rng.random(n) < 0.05
    return pd.DataFrame(
        {
            "patient_id": [f"P{i:04d}" for i in range(1, n + 1)],
            "image_id": [f"I{i:04d}" for i in range(1, n + 1)],
            "age": np.clip(rng.normal(60, 15, n), 18, 95).round().astype(int),
            "sex": rng.choice(["F", "M"], size=n),
            "presentation": presentation,
            "crp": np.where(crp_missing, np.nan, crp),
            "finding": [FINDING[p] for p in phenotype],
            "nodule_phenotype": nodule,
            "opacity_phenotype": opacity,
            "disagree": disagree,
        }
    )
