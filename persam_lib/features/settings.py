"""The settings record of a feature file: how its features were made, so that only features made
the same way are used together.

Every feature file carries one record (the JSON attribute ``extraction``, beside CLAM's and
TRIDENT's own attributes). For `persam extract` it holds the encoder and the sha256 of its weight
file (``"none"`` for a weightless encoder such as ``stats``), patch size, target mpp (``None``:
each slide's native level 0), stride, minimum tissue fraction, the tissue-mask settings and the
version of persam-lib. Imported CLAM / TRIDENT files get a smaller one: source format, encoder if
known, patch size and mpp.

The library version is recorded *and compared*: a new version may change tissue detection or
patching, so a folder is never silently filled half by one version and half by another (rerun
with ``--overwrite`` to redo it). The reader backend, batch size and number of readers are not
recorded: they do not change the features.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persam_lib.io.paths import input_file_problem

if TYPE_CHECKING:  # extract.py imports this module
    from persam_lib.features.config import ExtractConfig
    from persam_lib.features.store import SlideFeatures

UNRECORDED = "unrecorded"  # the source of a file written without a record (an older persam, a foreign tool)

# the `persam extract` option that sets each recorded setting, for messages
OPTIONS = {
    "encoder": "--encoder",
    "encoder_weights_sha256": "--weights",
    "patch_size": "--patch-size",
    "mpp": "--mpp",
    "stride": "--stride",
    "min_tissue_fraction": "--min-tissue",
}


def library_version() -> str:
    """The installed version of persam-lib ("unknown" when running from a source tree never installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("persam-lib")
    except PackageNotFoundError:
        return "unknown"


def weights_digest(path: str | Path | None) -> str:
    """sha256 of an encoder's weight file, or ``"none"`` for an encoder without one.

    Two files of one name can hold different weights; the digest tells them apart.
    """
    if not path:
        return "none"
    problem = input_file_problem(path, "weight file")
    if problem:
        raise FileNotFoundError(f"The {problem}. Pass --weights the path of a local state dict.")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


HF_WEIGHT_FILES = ("*.safetensors", "*.bin", "config.json", "preprocessor_config.json")  # what a save_pretrained folder's weights and set-up are


def folder_digest(folder: str | Path) -> str:
    """sha256 over a Hugging Face ``save_pretrained`` folder's weight and configuration files (names
    and contents, in name order): an ``hf:<folder>`` encoder's weights have no single file, and two
    folders of one name can hold different models."""
    folder = Path(folder)
    files = sorted({p for pattern in HF_WEIGHT_FILES for p in folder.glob(pattern) if p.is_file()})
    if not files:
        raise FileNotFoundError(f"{folder}: no weight files ({', '.join(HF_WEIGHT_FILES)}); give hf: a folder written by save_pretrained")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + weights_digest(path).encode())
    return digest.hexdigest()


def encoder_weights_digest(config: "ExtractConfig") -> str:
    """The digest of the encoder's weights: its weight file's, an ``hf:<folder>``'s folder, or "none"."""
    if config.encoder_weights:
        return weights_digest(config.encoder_weights)
    if config.encoder.startswith("hf:"):
        from persam_lib.features.hf_encoder import parse_hf_name

        return folder_digest(parse_hf_name(config.encoder)[0])  # without its @read-out
    return "none"


def extraction_settings(config: "ExtractConfig") -> dict[str, Any]:
    """The record `persam extract` writes into every feature file for ``config``."""
    patch = config.patch
    return {
        "source": "persam",
        "encoder": config.encoder,
        "encoder_weights_sha256": encoder_weights_digest(config),
        "patch_size": int(patch.patch_size),
        "mpp": None if patch.mpp is None else float(patch.mpp),
        "stride": int(patch.stride or patch.patch_size),
        "min_tissue_fraction": float(patch.min_tissue_fraction),
        "tissue": {**asdict(config.tissue), "thumbnail_downsample": float(config.thumbnail_downsample)},
        "library_version": library_version(),
    }


def imported_settings(fmt: str, data: "SlideFeatures") -> dict[str, Any]:
    """The record of a feature file brought in from another tool (``fmt``: clam, trident).

    Only what such a file tells: its encoder when it names one, patch size and mpp (None when
    it does not say).
    """
    mpp = data.mpp if math.isfinite(data.mpp) else None
    return {"source": fmt, "encoder": data.encoder, "patch_size": int(data.patch_size), "mpp": mpp, "library_version": library_version()}


def recorded_settings(data: "SlideFeatures") -> dict[str, Any]:
    """The settings a file was made with: its record, or — for a file written without one — what
    its attributes tell (encoder and patch size) under the source ``"unrecorded"``."""
    if data.extraction is not None:
        return data.extraction
    return {"source": UNRECORDED, "encoder": data.encoder, "patch_size": int(data.patch_size)}


def setting_differences(recorded: dict[str, Any], wanted: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Every setting whose value differs between two records, as (name, recorded, wanted);
    nested settings are named with dots (``tissue.min_area``), a setting one record lacks is
    ``None`` there, and numbers are equal when they agree to 1e-9."""
    a, b = _flat(recorded), _flat(wanted)
    return [(name, a.get(name), b.get(name)) for name in sorted(set(a) | set(b), key=_order) if not _same(a.get(name), b.get(name))]


def describe(differences: list[tuple[str, Any, Any]], first: str, second: str) -> str:
    """``mpp: 0.5 in FIRST, 2.0 in SECOND (--mpp); ...`` for a message."""
    parts = []
    for name, one, two in differences:
        option = f" ({OPTIONS[name]})" if name in OPTIONS else ""
        parts.append(f"{name}: {shown(name, one)} in {first}, {shown(name, two)} in {second}{option}")
    return "; ".join(parts)


def shown(name: str, value: Any) -> str:
    """A setting's value as a message shows it."""
    if value is None:
        return "native" if name == "mpp" else "not recorded"
    if name == "encoder_weights_sha256" and isinstance(value, str) and len(value) > 12:
        return f"sha256 {value[:12]}…"
    return repr(value) if isinstance(value, str) else str(value)


def _flat(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _order(name: str) -> tuple[int, str]:
    names = ["source", "encoder", "encoder_weights_sha256", "patch_size", "mpp", "stride", "min_tissue_fraction"]
    return (names.index(name), name) if name in names else (len(names) + (name == "library_version"), name)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b
