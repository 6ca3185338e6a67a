"""Agent on a video file against a real Mosquitto: masks, stats, status, shutdown, last will."""

from __future__ import annotations

import json
import os
import socket
import time

import numpy as np
import pytest

from edge_agent.protocol.encoding import decode
from tests.agent.helpers import agent_config, validator, wait_until

pytestmark = pytest.mark.e2e


def _check_masks(masks, resolution=(64, 64)):
    ids = [m["frame_id"] for m in masks]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), f"frame ids not increasing: {ids}"
    for m in masks:
        mask = decode(m["mask"], m["encoding"])
        assert mask.shape == (m["height"], m["width"]) == resolution
        counts = np.bincount(mask.ravel(), minlength=2)
        for i, name in enumerate(m["classes"]):
            assert m["coverage"][name] == pytest.approx(counts[i] / mask.size, abs=1e-5)
        # the red box covers about a third of the width and half of the height
        assert 0.08 < m["coverage"]["pet"] < 0.3, m["coverage"]
        assert m["latency_ms"] >= 0 and m["published_at"] >= m["captured_at"]


def test_file_end_to_end_and_sigterm(broker, tiny_bundle, clip, unique_id, agents, collectors,
                                     tmp_path):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = str(tmp_path / "notify.sock")
    notify.bind(notify_path)
    notify.settimeout(0.1)
    health = tmp_path / "health.json"
    col = collectors(broker, unique_id)
    agent = agents(agent_config(tiny_bundle, str(clip), broker.host, broker.port, unique_id,
                                health_file=str(health)),
                   env={"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "1000000"})
    assert wait_until(lambda: len(col.of("mask")) >= 15 and col.of("stats"), 30), agent.log()
    masks, stats, statuses = col.of("mask"), col.of("stats"), col.of("status")
    _check_masks(masks)
    # degraded until the first frame (unless it came before the broker connection)
    first = statuses[0]
    assert first["state"] == "online" or first["reason"] == "source: waiting for first frame", first
    assert wait_until(lambda: col.last_state() == "online", 10), col.of("status")
    assert all(s["device"] == "CPU" for s in statuses)
    for kind, items in (("mask", masks), ("stats", stats), ("status", statuses)):
        v = validator(kind)
        for item in items:
            v.validate(item)
    s = stats[-1]
    assert s["frames"]["captured"] >= s["frames"]["inferred"] >= s["frames"]["published"] > 0
    assert s["device"] == "CPU" and s["precision"] == "INT8" and s["process"]["rss_bytes"] > 0
    assert json.loads(health.read_text())["state"] == "online"

    late = collectors(broker, unique_id)  # a late subscriber learns the state from the retained
    assert wait_until(lambda: late.retained("status"), 5)
    assert late.retained("status")[-1]["state"] == "online"

    t0 = time.monotonic()
    assert agent.terminate(timeout=10) == 0, agent.log()
    assert time.monotonic() - t0 < 5
    assert wait_until(lambda: late.last_state() == "offline", 5), late.of("status")
    assert late.of("status")[-1]["reason"] == "shutdown"
    assert json.loads(health.read_text())["state"] == "offline"

    notes = []
    while True:
        try:
            notes.append(notify.recv(4096).decode())
        except OSError:
            break
    notify.close()
    assert any("READY=1" in n for n in notes), notes
    assert any("WATCHDOG=1" in n for n in notes), notes
    assert any("STOPPING=1" in n for n in notes), notes


def test_rle_frame_resolution_mqtt311(broker, tiny_bundle, clip, unique_id, agents, collectors):
    col = collectors(broker, unique_id)
    agent = agents(agent_config(
        tiny_bundle, str(clip), broker.host, broker.port, unique_id,
        output={"mask_encoding": "rle", "mask_resolution": "frame", "max_publish_fps": 5.0},
        mqtt={"protocol": "3.1.1", "qos_mask": 1}))
    assert wait_until(lambda: len(col.of("mask")) >= 8, 30), agent.log()
    masks = col.of("mask")
    _check_masks(masks, resolution=(80, 96))
    assert all(m["encoding"] == "rle" and m["frame_width"] == 96 for m in masks)
    span = masks[-1]["published_at"] - masks[0]["published_at"]
    assert len(masks) / max(span, 1e-3) < 7.5, "publish rate limit (5/s) not applied"
    v = validator("mask")
    for m in masks:
        v.validate(m)
    assert agent.terminate() == 0


def test_kill_publishes_last_will_and_device_fallback(broker, tiny_bundle, clip, unique_id,
                                                      agents, collectors):
    col = collectors(broker, unique_id)
    agent = agents(agent_config(tiny_bundle, str(clip), broker.host, broker.port, unique_id,
                                model={"devices": ["MYRIAD", "CPU"]}))
    assert wait_until(lambda: col.of("mask"), 30), agent.log()
    assert wait_until(lambda: col.last_state() == "online", 10), col.of("status")
    status = col.of("status")[-1]
    assert status["state"] == "online" and status["device"] == "CPU"
    assert "MYRIAD" in status["device_errors"], status
    assert "MYRIAD" in agent.log()
    agent.kill()
    assert wait_until(lambda: col.last_state() == "offline", 10), col.of("status")
    assert col.of("status")[-1]["reason"] == "connection lost"


def test_non_looping_file_stops_cleanly(broker, tiny_bundle, clip, unique_id, agents, collectors):
    col = collectors(broker, unique_id)
    agent = agents(agent_config(tiny_bundle, str(clip), broker.host, broker.port, unique_id,
                                source={"loop": False, "fps": 40.0}))
    assert agent.proc.wait(30) == 0, agent.log()
    assert 30 <= len(col.of("mask")) <= 40
    assert wait_until(lambda: col.last_state() == "offline", 5)
    assert os.path.exists(str(clip))
