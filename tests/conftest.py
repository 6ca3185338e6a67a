"""Shared fixtures: a real Mosquitto broker and small generated bundles.

Under CI (CI=true) a missing broker or tool is a failure, never a skip.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tools.broker import Broker, mosquitto_binary

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, what: str) -> None:
    """Skip on a laptop without ``what``; fail under CI, where it must exist."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true but missing", pytrace=False)
    pytest.skip(f"{what} not available")


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> Broker:
    """One broker for the session; tests isolate themselves by device id/prefix."""
    require(mosquitto_binary() is not None, "mosquitto (apt-get install mosquitto)")
    b = Broker(tmp_path_factory.mktemp("mosquitto")).start()
    yield b
    b.stop()


@pytest.fixture
def own_broker(tmp_path) -> Broker:
    """A broker this test may stop and restart (same port)."""
    require(mosquitto_binary() is not None, "mosquitto (apt-get install mosquitto)")
    b = Broker(tmp_path / "mosquitto").start()
    yield b
    b.stop()


@pytest.fixture
def unique_id() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A real OpenVINO IR bundle (cpu + gpu + npu targets) built without torch."""
    from tests.helpers.tiny_bundle import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("bundle"))
