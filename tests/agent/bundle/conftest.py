"""Fixtures of the unit tests that read or tamper with a bundle."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    """A private copy of the session's tiny bundle, free to tamper with."""
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    return copy
