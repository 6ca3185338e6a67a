"""One owner per piece of state: the defects a review found, each pinned by a test.

Each of these failed on the flat layout (961c3a6): the engine in service had two owners,
the reload's re-announce flag was a bare bool, the health file was written (and the
agent's facts gathered) under Health's lock, and a snapshot's last finisher won.
"""

from __future__ import annotations

import threading
import time

import pytest

from edge_agent.app import Agent
from edge_agent.bundle.manifest import OpenedBundle
from edge_agent.cameras import Snapshot
from edge_agent.config import load
from edge_agent.health.sdnotify import Notifier
from edge_agent.health.state import Health
from edge_agent.inference.engine import Engine
from edge_agent.inference.pipeline import Pipeline
from tests.agent.helpers import to_toml


@pytest.fixture
def agent(tiny_bundle, tmp_path, config_data):
    path = tmp_path / "agent.toml"
    path.write_text(to_toml({**config_data, "model": {"bundle": str(tiny_bundle)}}))
    cfg, _ = load(str(path), {})
    return Agent(cfg, threading.Event(), notifier=Notifier({}))


def test_status_names_the_model_in_service_the_moment_it_is_swapped(agent):
    """The infer thread swaps the engine; status and stats read that same owner, so there
    is no window where masks come from the new model and status names the old one."""
    agent.engine.load()
    agent.pipeline = Pipeline(agent.engine, "model", agent.slots, agent.camera, agent.totals,
                              agent.stop)
    agent.pipeline.engine.start(lambda meta, out, figures: None)
    new = Engine(agent.cfg.model, OpenedBundle.open(agent.cfg.model.bundle,
                                                    agent.cfg.model.target))
    new.load()
    done = agent.pipeline.swap_engine(new)
    agent.pipeline._take_new_engine()  # the infer thread's step; reload() has not resumed
    assert done.is_set() and agent.pipeline.engine is new
    assert agent.engine is new


def test_the_reload_flag_is_handed_over_by_an_event(agent):
    """Set by the reload thread, taken by the main loop: a bare bool read-and-cleared in
    one statement loses a set that lands between the read and the write; an Event that
    is cleared before the statuses are read back cannot."""
    assert isinstance(agent._republish, threading.Event)
    assert not agent._republish.is_set()


def test_a_slow_health_file_never_blocks_the_threads_that_report(tmp_path):
    """Facts and the file write happen on the writer thread, outside Health's lock: a
    capture thread's change and the main loop's reads return while the disk is slow."""
    gate = threading.Event()

    def slow_facts():
        gate.wait(3.0)  # an SD card that takes seconds to write
        return {}

    health = Health(str(tmp_path / "health.json"), Notifier({}), facts=slow_facts)
    first = threading.Thread(target=health.set, args=("source", "source: stream ended"))
    first.start()
    first.join(0.5)
    try:
        assert not first.is_alive(), "the reporting thread waited on the health file"
        t0 = time.monotonic()
        health.set("mqtt", "mqtt: down")
        view = health.view()
        assert time.monotonic() - t0 < 0.5, "another thread waited on the health file"
        assert view.state == "degraded"
    finally:
        gate.set()
        first.join(5.0)
    assert health.flush()
    assert "mqtt: down" in (tmp_path / "health.json").read_text()


def test_a_snapshots_first_outcome_stands():
    """The publish thread finishes it with the result; the commands thread's timeout
    that comes after must not overwrite it."""
    snap = Snapshot()
    snap.finish(None)  # published
    snap.finish("no frame within 5 s")  # the timeout path, a moment later
    assert snap.done.is_set() and snap.error is None
