"""Where the pipeline's files live under a repository root: the paths ``dvc.yaml`` names.

Flows take a root and build a ``Layout`` from it, so nothing depends on the working directory;
``tests/test_layout.py`` checks that every path here is the one ``dvc.yaml`` uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# each place relative to the repository root, as dvc.yaml writes it
PLACES = {
    "params": "params.yaml",
    "raw": "data/raw",
    "prepared": "data/prepared",
    "manifest": "data/prepared/manifest.parquet",
    "vocabulary": "data/prepared/vocabulary.json",
    "synthetic": "data/synthetic",
    "models": "data/models",  # the models folder: discriminator/ and cada/
    "discriminator": "data/models/discriminator",
    "cada": "data/models/cada",
    "reports": "data/reports",
    "registration": "data/registration.json",  # the MLflow run and version evaluate registered
}


@dataclass(frozen=True)
class Layout:
    root: Path
    params: Path
    raw: Path
    prepared: Path
    manifest: Path
    vocabulary: Path
    synthetic: Path
    models: Path
    discriminator: Path
    cada: Path
    reports: Path
    registration: Path

    @classmethod
    def at(cls, root: str | Path = ".") -> Layout:
        root = Path(root)
        return cls(root=root, **{name: root / rel for name, rel in PLACES.items()})

    def resolve(self, path: str | Path) -> Path:
        """A path from params (relative to the repository root) as seen from here."""
        path = Path(path)
        return path if path.is_absolute() else self.root / path
