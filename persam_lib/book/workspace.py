"""Where the book's pipeline keeps its artefacts, so every notebook finds the previous one's output."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    """A folder with the cohort (generated or linked), features, runs and explanations."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())

    @property
    def demo_dir(self) -> Path:
        return self.root / "cohort"

    @property
    def demo_manifest(self) -> Path:
        return self.demo_dir / "manifest.yaml"

    def manifest(self, given: str | Path = "") -> Path:
        """The manifest a notebook should use: the one given, or the generated demo cohort's."""
        return Path(given).resolve() if str(given) else self.demo_manifest

    @property
    def features_dir(self) -> Path:
        return self.root / "features"

    def run_dir(self, model: str) -> Path:
        return self.root / "runs" / model

    def attention_path(self, model: str) -> Path:
        return self.root / "explain" / f"{model}_attention.parquet"

    def predictions_path(self, model: str) -> Path:
        return self.root / "explain" / f"{model}_predictions.csv"
