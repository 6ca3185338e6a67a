"""Host-side build pipeline: dataset -> trained checkpoint -> verified OpenVINO bundle."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path
from typing import Dict

TOOL_PACKAGES = ("torch", "openvino", "nncf", "segmentation_models_pytorch", "segedge")


def _version(package: str) -> str:
    names = [package, package.replace("_", "-")]
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "none"


def tool_versions() -> Dict[str, str]:
    """Versions of the tools that build a bundle (from package metadata, no imports)."""
    return {p: _version(p) for p in TOOL_PACKAGES}


def code_version() -> str:
    """segedge version plus the git commit (with '+dirty') when run from a checkout."""
    version = _version("segedge")
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty"],
                                capture_output=True, text=True, timeout=5, check=True)
        return f"{version}+g{commit.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        return version
