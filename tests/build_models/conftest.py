"""Fixtures for the build pipeline: synthetic Pet folders, a tiny trained run, a bundle."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.build_models.pets import make_pets

SIZE = 64


@pytest.fixture(scope="session")
def pets_dir(tmp_path_factory) -> Path:
    """A read-only-by-convention synthetic dataset (20 trainval, 6 test)."""
    return make_pets(tmp_path_factory.mktemp("pets") / "oxford-iiit-pet")


@pytest.fixture
def pets_copy(pets_dir, tmp_path) -> Path:
    """A private copy a test may break."""
    return Path(shutil.copytree(pets_dir, tmp_path / "pets"))


@pytest.fixture(scope="session")
def tiny_build(pets_dir, tmp_path_factory):
    """``segedge-build all`` on the synthetic set: train a few steps at 64x64, all targets."""
    pytest.importorskip("torch")
    pytest.importorskip("nncf")
    from build_models import cli

    work = tmp_path_factory.mktemp("build")
    argv = ["all", "--data", str(pets_dir), "--out", str(work / "models"),
            "--run-dir", str(work / "run"), "--name", "tiny", "--version", "0.0.1",
            "--calib-size", "8", "--tolerance", "0.05", "--overlays", "2",
            "--speed-iterations", "3", "--no-progress",
            "--", "--size", str(SIZE), "--epochs", "3", "--batch-size", "6", "--lr", "3e-3",
            "--threads", "2"]
    assert cli.main(argv) == 0
    return {"bundle": work / "models" / "tiny" / "0.0.1", "run": work / "run",
            "checkpoint": work / "run" / "best.pt", "data": pets_dir, "work": work}
