"""The embedded demo cohort: generated slides, a clinical table and ground truth.

The science is in the data. Every slide has a *nodular* and a *diffuse* lesion region, each of
phenotype A or B (or C, with ``DemoConfig(subtypes=3)``). The categorical field ``site`` says which region decides the label:
``nodal`` → the nodular region, ``extranodal`` → the diffuse one. In about half of the patients
the two regions disagree, so an image-only model can be right in at most ~75% of patients,
while a model that reads the record can be right in all of them — and for every record we know
which region its attention should be on. ``age`` and ``sex`` are noise; ``ldh`` is weakly
informative (higher on average in subtype B), with some values missing. ``site_permuted`` is a
negative control: ``site``'s values permuted across patients (made by the manifest loader, see
``permutation_of``), so it has site's distribution and none of its meaning. ``mrn`` is a made-up
medical record number marked ``identifying``: no model reads it and the book's privacy scan checks
that none of its values reaches the built book.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image
from tqdm import tqdm

from persam_lib.io.atomic import atomic_path, write_json_atomic, write_text_atomic
from persam_lib.cohort.demo_tissue import LABEL_DOWNSAMPLE, REGION_LABELS, SlideDesign, render_slide
from persam_lib.cohort.truth import MASKS_DIR, TRUTH_FILE, mask_file, write_truth
from persam_lib.slides.tiff_writer import write_pyramidal_tiff

SUBTYPES = "ABC"  # the phenotypes the renderer draws (`demo_tissue._PHENOTYPES`)
DESCRIPTION = """\
Each demo slide has two lesion regions, a **nodular** and a **diffuse** one, and each shows phenotype
A or B. The clinical field `site` decides which region determines the label: `nodal` → the nodular
region, `extranodal` → the diffuse region. In about half of the patients the two regions disagree,
so a model that ignores the record can be right for at most ~75% of patients. `age` and `sex` are
noise, `ldh` is weakly informative, and `site_permuted` is a negative control: `site`'s values
permuted across patients. The table also holds a made-up medical record number, marked
*identifying*: no model reads it and the book never shows it (a scan of the built book checks)."""  # what the cohort chapter says of the demo cohort
DECIDING_FIELD = "site"
DIAGNOSTIC_REGION = {"nodal": "nodular", "extranodal": "diffuse"}
NOISE_FIELDS = ("age", "sex")  # drawn independently of everything else


@dataclass(frozen=True)
class DemoConfig:
    """Size and seed of the generated cohort; the defaults keep `make book` within minutes on 2 CPUs."""

    patients: int = 128
    seed: int = 0
    width: int = 3072  # level-0 pixels
    height: int = 2304
    mpp: float = 0.5  # microns per pixel at level 0 (20x)
    region_radius: int = 420  # level-0 pixels
    mask_downsample: int = 4  # ground-truth masks are stored at this downsample (fixed by the renderer)
    disagree_fraction: float = 0.5
    subtypes: int = 2  # classes: A, B (default) or A, B, C — each a nuclear phenotype of the deciding region
    first_id: int = 1  # patients P0001…, slides S0001…; a second cohort of new patients starts elsewhere (e.g. 1001) so no id is shared

    @property
    def classes(self) -> list[str]:
        return list(SUBTYPES[: self.subtypes])


def make_demo_cohort(out: str | Path, config: DemoConfig = DemoConfig(), *, progress: bool = True, workers: int | None = None) -> Path:
    """Generate the demo cohort in ``out`` and return the path of its manifest.

    Slides are rendered in ``workers`` processes (default: one per CPU). Resumable: slides already
    written (complete, renamed into place) are kept, so an interrupted run continues where it
    stopped. The tables and manifest are written last, atomically. The result depends only on
    ``config`` (each slide has its own seed), not on the number of workers.
    """
    out = Path(out)
    (out / "slides").mkdir(parents=True, exist_ok=True)
    (out / "truth" / MASKS_DIR).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    table = _design_patients(config, rng)

    todo = [
        (config, out, row.slide_id, row.nodular_phenotype, row.diffuse_phenotype)
        for row in table.itertuples()
        if not ((out / "slides" / f"{row.slide_id}.tiff").exists() and mask_file(out / "truth", row.slide_id).exists())
    ]
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(todo), desc="demo slides", disable=not progress)
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            for _ in pool.map(_render_and_write, todo):
                bar.update()
    else:
        for job in todo:
            _render_and_write(job)
            bar.update()
    bar.close()

    slides = table[["slide_id", "patient_id"]].assign(path=[f"slides/{s}.tiff" for s in table.slide_id])
    # a made-up medical record number: an identifying field, which no model reads and the book never shows
    table["mrn"] = made_up_mrns(len(table), [config.seed, 1])
    clinical = table[["patient_id", "mrn", "age", "sex", "site", "ldh", "subtype"]]
    regions = table[["slide_id", "patient_id", "nodular_phenotype", "diffuse_phenotype", "disagree"]]
    write_text_atomic(out / "slides.csv", slides.to_csv(index=False))
    write_text_atomic(out / "clinical.csv", clinical.to_csv(index=False, na_rep=""))
    write_truth(out / "truth", regions, mask_downsample=config.mask_downsample, labels=REGION_LABELS, deciding_field=DECIDING_FIELD, diagnostic_region=DIAGNOSTIC_REGION, noise_fields=NOISE_FIELDS)
    manifest = {
        "cohort": "demo",
        "slides": "slides.csv",
        "clinical": "clinical.csv",
        "label": {"column": "subtype", "classes": config.classes},
        "fields": {
            "mrn": {"type": "text", "identifying": True},
            "age": {"type": "numeric", "min": 0, "max": 120, "unit": "years"},
            "sex": {"type": "categorical", "values": ["F", "M"]},
            "site": {"type": "categorical", "values": ["nodal", "extranodal"]},
            "ldh": {"type": "numeric", "min": 50, "max": 3000, "unit": "U/L"},
            "site_permuted": {"type": "categorical", "values": ["nodal", "extranodal"], "permutation_of": "site"},
        },
        "truth": f"truth/{TRUTH_FILE}",
    }
    return write_manifest(out, manifest, asdict(config))


def made_up_mrns(n: int, seed: list[int]) -> list[str]:
    """``n`` distinct made-up medical record numbers (``MRN-`` and 7 digits): an identifying field's values."""
    return [f"MRN-{v}" for v in np.random.default_rng(seed).choice(np.arange(1_000_000, 10_000_000), n, replace=False)]


def write_manifest(out: Path, manifest: dict, settings: dict) -> Path:
    """A generated cohort's settings (``demo_config.json``), then its manifest — written last and
    atomically, so a manifest on disk means a complete cohort. Returns the manifest's path."""
    write_json_atomic(out / "demo_config.json", settings)
    return write_text_atomic(out / "manifest.yaml", yaml.safe_dump(manifest, sort_keys=False))


def _render_and_write(job: tuple[DemoConfig, Path, str, str, str]) -> str:
    """Render one slide and write it with its ground-truth mask (run in a worker process)."""
    config, out, slide_id, nodular, diffuse = job
    slide_rng = np.random.default_rng([config.seed, int(slide_id[1:])])
    design = SlideDesign(config.width, config.height, nodular, diffuse, config.region_radius)
    rgb, labels = render_slide(design, slide_rng)  # labels at 1/4 resolution
    write_pyramidal_tiff(out / "slides" / f"{slide_id}.tiff", rgb, mpp=config.mpp)
    _atomic_png(mask_file(out / "truth", slide_id), labels)
    return slide_id


def _design_patients(config: DemoConfig, rng: np.random.Generator) -> pd.DataFrame:
    """One row per patient: record, label, and the phenotype of each slide region."""
    n = config.patients
    if config.mask_downsample != LABEL_DOWNSAMPLE:
        raise ValueError(f"mask_downsample must be {LABEL_DOWNSAMPLE} (the renderer's label resolution)")
    if n < 4:
        raise ValueError(f"The demo cohort needs at least 4 patients, got {n}.")
    if config.subtypes not in (2, 3):
        raise ValueError(f"The demo cohort has 2 or 3 subtypes, got {config.subtypes}.")
    if n < 2 * config.subtypes:
        raise ValueError(f"The demo cohort needs at least {2 * config.subtypes} patients for {config.subtypes} subtypes, got {n}.")
    k = config.subtypes
    subtype = np.array(config.classes * (n // k) + config.classes[: n % k])
    rng.shuffle(subtype)
    site = rng.choice(["nodal", "extranodal"], size=n)
    disagree = rng.random(n) < config.disagree_fraction
    if k == 2:
        other = np.where(disagree, np.where(subtype == "A", "B", "A"), subtype)
    else:  # the other region shows one of the other subtypes' phenotypes, at random
        shift = rng.integers(1, k, size=n)
        other = np.where(disagree, np.array(config.classes)[(np.searchsorted(config.classes, subtype) + shift) % k], subtype)
    nodular = np.where(site == "nodal", subtype, other)
    diffuse = np.where(site == "nodal", other, subtype)
    age = np.clip(rng.normal(62, 14, n), 18, 95).round()
    sex = rng.choice(["F", "M"], size=n)
    ldh = np.clip(rng.normal(np.select([subtype == "B", subtype == "C"], [330, 290], 250), 90), 80, 2500).round()
    ldh_missing = rng.random(n) < 0.05
    return pd.DataFrame(
        {
            "patient_id": [f"P{i:04d}" for i in range(config.first_id, config.first_id + n)],
            "slide_id": [f"S{i:04d}" for i in range(config.first_id, config.first_id + n)],
            "age": age.astype(int),
            "sex": sex,
            "site": site,
            "ldh": pd.array(np.where(ldh_missing, np.nan, ldh), dtype="Float64").astype("Int64"),
            "subtype": subtype,
            "nodular_phenotype": nodular,
            "diffuse_phenotype": diffuse,
            "disagree": disagree,
        }
    )




def _atomic_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
