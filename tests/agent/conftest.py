"""Fixtures for the agent tests (the broker and tiny bundle come from tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import List

import pytest

from tests.agent.helpers import AgentProcess, Collector, write_clip


@pytest.fixture
def config_data(tmp_path) -> dict:
    """The smallest valid agent config, as a dict for ``to_toml``: an (empty) bundle
    folder and a clip file that exist. The one home of this fixture for every room."""
    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"x")
    return {"device_id": "cam-01", "source": {"uri": str(clip)},
            "model": {"bundle": str(bundle)}}


@pytest.fixture(scope="session")
def clip(tmp_path_factory) -> Path:
    """A 2 s, 20 fps, 96x80 MJPG clip of a red box moving over blue."""
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.avi")


@pytest.fixture
def agents(tmp_path):
    """Start agents with ``agents(config, env=...)``; all are killed at the end."""
    started: List[AgentProcess] = []

    def start(config, env=None, args=()) -> AgentProcess:
        agent = AgentProcess(tmp_path / f"agent{len(started)}", config, env, tuple(args))
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.kill()


@pytest.fixture
def collectors():
    made: List[Collector] = []

    def make(broker, device_id: str) -> Collector:
        c = Collector(broker.host, broker.port, device_id)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
