"""The example of a user's cohort (``data_manifests/example/``): not the demo's fields, label,
classes or slide sizes, no ground truth, and features that TRIDENT wrote (``features_<encoder>/<slide>.h5``).

What a user brings: `make_example_cohort(out)` writes ``slides/*.tiff`` (plain pink-and-purple
noise with a few darker blobs, 1536 × 1024 and 1280 × 1792 px, 0.25 µm/px), ``slides.csv``,
``records.csv`` (the user's columns: grade, smoker, psa, response), ``manifest.yaml`` and ``trident/features_uni_v1/*.h5``
(64 features per patch, coords in level-0 pixels, ``patch_size`` 512 at level 0). The response
depends on ``grade`` and on the features, so models learn something, but nothing about it is the
demo's: no ``site``, no regions, no truth.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from persam_lib.slides.tiff_writer import write_pyramidal_tiff

CLASSES = ("CR", "PR", "SD")
MANIFEST = """\
# An example of your own cohort: 18 patients, three classes, no ground truth. Its slides and the
# TRIDENT features are made by `make example` (python -m persam_lib.cohort.example data_manifests/example).
# Check it:         persam validate data_manifests/example/manifest.yaml
# Import features:  persam import-features data_manifests/example/trident --manifest data_manifests/example/manifest.yaml --format trident --out data_manifests/example/features
# Build the book:   persam book --manifest data_manifests/example/manifest.yaml --features data_manifests/example/features --work _work/example
cohort: prostate-pilot
slides: slides.csv          # slide_id, patient_id, path (relative to this file)
clinical: records.csv       # patient_id, then one column per field and the label
label: {column: response, classes: [CR, PR, SD]}
fields:
  grade: {type: categorical, values: [G1, G2, G3]}
  smoker: {type: categorical, values: ['yes', 'no']}   # quoted: unquoted yes/no are booleans in YAML
  psa: {type: numeric, min: 0, max: 1000, unit: ng/mL}
groups:                     # optional: fields read together as one record token (persam_paper; persam with record_tokens=group)
  history: [grade, smoker]
"""
FEATURE_DIM = 64


def make_example_cohort(out: str | Path, patients: int = 18, seed: int = 3) -> Path:
    """Write the cohort into ``out`` and return its manifest's path (the same files every time: seeded)."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    (out / "slides").mkdir(parents=True, exist_ok=True)
    features = out / "trident" / "features_uni_v1"
    features.mkdir(parents=True, exist_ok=True)
    slide_rows, record_rows = ["slide_id,patient_id,path"], ["patient_id,grade,smoker,psa,response"]
    for i in range(patients):
        case, slide = f"C{i:03d}", f"HE-{i:03d}"
        response = CLASSES[i % 3]
        grade = ("G1", "G2", "G3")[(i % 3 + (i % 5 == 0)) % 3]
        smoker = "" if i % 7 == 3 else ("yes" if rng.random() < 0.4 else "no")
        psa = f"{rng.lognormal(1.5, 0.6):.2f}" if i % 6 else ""
        width, height = (1536, 1024) if i % 2 else (1280, 1792)
        image = np.full((height, width, 3), 240, np.uint8)
        yy, xx = np.mgrid[:height, :width]
        blob = ((xx - width * 0.5) / (width * 0.35)) ** 2 + ((yy - height * 0.5) / (height * 0.35)) ** 2 < 1
        image[blob] = (rng.normal([200, 120, 170], 12, (int(blob.sum()), 3))).clip(0, 255).astype(np.uint8)
        write_pyramidal_tiff(out / "slides" / f"{slide}.tiff", image, mpp=0.25)
        slide_rows.append(f"{slide},{case},slides/{slide}.tiff")
        record_rows.append(f"{case},{grade},{smoker},{psa},{response}")
        xs, ys = np.meshgrid(np.arange(0, width - 511, 512), np.arange(0, height - 511, 512))
        coords = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.int64)
        signal = np.zeros(FEATURE_DIM, np.float32)
        signal[CLASSES.index(response)] = 1.5
        feats = (rng.normal(0, 1, (len(coords), FEATURE_DIM)) + signal).astype(np.float32)
        with h5py.File(features / f"{slide}.h5", "w") as f:
            f.create_dataset("features", data=feats)
            c = f.create_dataset("coords", data=coords)
            c.attrs["patch_size"] = 512
            c.attrs["patch_size_level0"] = 512
            c.attrs["level0_magnification"] = 40
            c.attrs["target_magnification"] = 20
    (out / "slides.csv").write_text("\n".join(slide_rows) + "\n")
    (out / "records.csv").write_text("\n".join(record_rows) + "\n")
    (out / "manifest.yaml").write_text(MANIFEST)
    return out / "manifest.yaml"


def main(argv: list[str] | None = None) -> int:
    """``python -m persam_lib.cohort.example [OUT]``: write the example cohort (default ``_work/example``)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "_work/example")
    manifest = make_example_cohort(out)
    print(f"example cohort: {manifest} (slides in {out / 'slides'}, TRIDENT features in {out / 'trident'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
