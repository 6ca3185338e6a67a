"""The bundle as the CLI checked it, handed to the agent so it is not hashed twice."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .manifest import Manifest, TargetEntry, open_target


@dataclass(frozen=True)
class OpenedBundle:
    manifest: Manifest
    target: TargetEntry
    model_path: Path

    @classmethod
    def open(cls, bundle: str, target: str) -> OpenedBundle:
        """Read and check the bundle (BundleError on any problem)."""
        manifest, entry, path = open_target(Path(bundle), target)
        return cls(manifest, entry, Path(path))
