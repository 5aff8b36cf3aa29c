"""Where the book's pipeline keeps its artefacts, so every notebook finds the previous one's output.

A notebook reads what earlier chapters made from ``work_dir`` (cohort, features, runs) and writes
what it makes to ``output_dir``, which is ``work_dir`` itself when the book is built. A sweep
point or a reviewer's re-execution gives its own ``output_dir``, so it neither collides with nor
quietly reuses the published products (a training run that found finished folds would skip them).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    """Inputs under ``root``; this notebook's products under ``output`` (default: ``root``)."""

    root: Path
    output: Path | None = None
    features: Path | None = None  # feature files the user brought (``persam book --features``); None: the work dir's

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())
        object.__setattr__(self, "output", Path(self.output).resolve() if self.output and str(self.output) else self.root)
        object.__setattr__(self, "features", Path(self.features).resolve() if self.features and str(self.features) else None)

    @classmethod
    def of(cls, work_dir: str | Path, output_dir: str | Path = "", features_dir: str | Path = "") -> "Workspace":
        """The workspace of a notebook's ``work_dir``, ``output_dir`` and ``features_dir`` parameters ("" = the work dir's)."""
        return cls(Path(work_dir), Path(output_dir) if str(output_dir) else None, Path(features_dir) if str(features_dir) else None)

    @property
    def features_given(self) -> bool:
        """Whether the features were brought by the user (imported, or extracted elsewhere): then no chapter extracts."""
        return self.features is not None

    @property
    def demo_dir(self) -> Path:
        """Where the demo cohort is (read from the work dir)."""
        return self.root / "cohort"

    @property
    def demo_manifest(self) -> Path:
        return self.demo_dir / "manifest.yaml"

    def manifest(self, given: str | Path = "") -> Path:
        """The manifest a notebook should use: the one given, or the generated demo cohort's."""
        return Path(given).resolve() if str(given) else self.demo_manifest

    @property
    def radiograph_dir(self) -> Path:
        """Where the demo radiograph cohort (2-D images) is, with its runs under ``runs/``."""
        return self.root / "radiographs"

    @property
    def radiograph_manifest(self) -> Path:
        return self.radiograph_dir / "manifest.yaml"

    @property
    def new_patients_dir(self) -> Path:
        """Where the new patients chapter keeps the cohort it applies the model to (the demo's
        external cohort), its features, predictions and exports."""
        return self.root / "new_patients"

    @property
    def features_dir(self) -> Path:
        """Feature files: the ones the user brought, or the work dir's."""
        return self.features if self.features is not None else self.root / "features"

    def run_dir(self, model: str) -> Path:
        """A trained model's run directory (read from the work dir)."""
        return self.runs_dir / model

    @property
    def out(self) -> "Workspace":
        """The same layout under the output dir: where this notebook writes (features the user brought stay theirs)."""
        return Workspace(self.output, features=self.features)

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def attention_path(self, model: str) -> Path:
        return self.root / "explain" / f"{model}_attention.parquet"

    def predictions_path(self, model: str) -> Path:
        return self.root / "explain" / f"{model}_predictions.csv"
