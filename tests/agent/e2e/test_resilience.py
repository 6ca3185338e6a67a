"""Broker outage and camera loss: the agent recovers by itself."""

from __future__ import annotations

import time

import pytest

from tests.agent.helpers import agent_config, scene, validator, wait_until
from tests.helpers.mjpeg_server import MjpegServer
from tools.broker import free_port

pytestmark = pytest.mark.e2e


def test_broker_restart(own_broker, tiny_bundle, clip, unique_id, agents, collectors):
    col = collectors(own_broker, unique_id)
    agent = agents(agent_config(tiny_bundle, str(clip), own_broker.host, own_broker.port,
                                unique_id, output={"max_publish_fps": 10.0}))
    assert wait_until(lambda: len(col.of("mask")) >= 5, 30), agent.log()
    own_broker.stop()
    time.sleep(4)
    assert agent.alive(), agent.log()
    col.clear()
    own_broker.start()
    # the status is re-sent on reconnect (live, so without the retain flag for us)
    assert wait_until(lambda: col.last_state() == "online" and len(col.of("mask")) >= 5, 30), \
        agent.log()
    late = collectors(own_broker, unique_id)  # the retained status was restored too
    assert wait_until(lambda: late.retained("status"), 5)
    assert late.retained("status")[-1]["state"] == "online"
    assert wait_until(lambda: col.of("stats"), 5)
    stats = col.of("stats")[-1]
    validator("stats").validate(stats)
    assert stats["queues"]["mqtt_outbound"] <= 50
    assert stats["process"]["rss_bytes"] < 600 * 2**20
    assert "mqtt connected (reconnect)" in agent.log()
    assert agent.terminate() == 0, agent.log()


def test_camera_loss_and_return(broker, tiny_bundle, unique_id, agents, collectors):
    cam = MjpegServer(lambda i: scene(i), free_port(), fps=10).start()
    try:
        col = collectors(broker, unique_id)
        agent = agents(agent_config(tiny_bundle, cam.url, broker.host, broker.port, unique_id,
                                    source={"stall_timeout_s": 2.0, "reconnect_max_s": 1.0}))
        assert wait_until(lambda: len(col.of("mask")) >= 5, 30), agent.log()
        assert col.last_state() == "online"
        cam.stop()
        assert wait_until(lambda: col.last_state() == "degraded", 15), agent.log()
        degraded = col.of("status")[-1]
        assert degraded["reason"].startswith("source:"), degraded
        validator("status").validate(degraded)
        assert agent.alive()
        col.clear()
        cam.start()
        assert wait_until(lambda: col.last_state() == "online" and col.of("mask"), 20), \
            agent.log()
        assert agent.terminate() == 0, agent.log()
    finally:
        cam.stop()


def test_frozen_camera_is_a_stall(broker, tiny_bundle, unique_id, agents, collectors):
    cam = MjpegServer(lambda i: scene(i), free_port(), fps=10).start()
    try:
        col = collectors(broker, unique_id)
        agent = agents(agent_config(tiny_bundle, cam.url, broker.host, broker.port, unique_id,
                                    source={"stall_timeout_s": 1.5, "reconnect_max_s": 1.0}))
        assert wait_until(lambda: len(col.of("mask")) >= 3, 30), agent.log()
        cam.frozen.set()
        assert wait_until(lambda: col.last_state() == "degraded", 10), agent.log()
        assert "no frame for" in col.of("status")[-1]["reason"]
        cam.frozen.clear()
        col.clear()
        assert wait_until(lambda: col.last_state() == "online" and col.of("mask"), 20), \
            agent.log()
        assert agent.terminate() == 0, agent.log()
    finally:
        cam.stop()
