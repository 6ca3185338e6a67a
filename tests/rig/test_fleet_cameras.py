"""One booted device with two cameras and a frames-in sender, over the rig's TLS broker.

dev-gpu is provisioned by the same first site.yml run as the rest of the fleet, with
``segedge_agent_cameras`` (the MJPEG stand-in twice, under two camera ids) and
``segedge_agent_frames_in`` listing one sender (conftest.py: MULTI, CAMERAS, SENDER);
the broker play gave the sender an identity of its own and the ACL its rows. Runs after
test_fleet.py (dev-gpu is untouched there) and before test_security.py.
"""

from __future__ import annotations

import json
import uuid

import cv2
import numpy as np
import pytest

from tests.rig.conftest import CAMERAS, MULTI, SENDER
from tests.rig.rig import wait_for

pytestmark = [pytest.mark.rig, pytest.mark.timeout(900)]
NOT_AUTHORISED = 135


def _health(dev) -> dict:
    out = dev.run("cat /var/lib/segedge/health.json").stdout
    return json.loads(out) if out.strip() else {}


def _status_when(fleet, topic_id: str, ok, what: str, timeout: float = 30) -> dict:
    """The retained status of ``topic_id`` once ``ok(status)`` holds."""
    seen = {}

    def check():
        msgs = fleet.mqtt(f"segedge/{topic_id}/status", retained_only=True, timeout=5)
        seen["last"] = json.loads(msgs[-1]) if msgs else None
        return seen["last"] if seen["last"] and ok(seen["last"]) else None

    try:
        return wait_for(check, timeout, 1, what)
    except TimeoutError as exc:
        pytest.fail(f"{exc}\nlast status: {seen.get('last')}\n{fleet.devices[MULTI].journal()}")


def _pet(mask: dict) -> float:
    coverage = mask["coverage"]
    return coverage["pet"] if isinstance(coverage, dict) else coverage[1]


def test_each_camera_publishes_under_its_own_id(fleet):
    dev = fleet.devices[MULTI]
    toml = dev.run("cat /etc/segedge/agent.toml").stdout
    tables = [line for line in toml.splitlines() if line.startswith("[")]
    assert tables.count("[[cameras]]") == 2 and "[frames_in]" in tables, toml
    assert f'senders = ["{SENDER}"]' in toml, toml
    for cam in CAMERAS:
        masks = fleet.mqtt(f"segedge/{cam}/mask", count=2, timeout=30)
        assert len(masks) == 2, f"{cam}: {len(masks)} masks\n{dev.journal()}"
        mask = json.loads(masks[-1])
        assert mask["device_id"] == cam and mask["encoding"] == "png", sorted(mask)
        assert 0.1 < _pet(mask) < 0.9, mask["coverage"]  # the stand-in's red left part
        status = _status_when(fleet, cam, lambda s: s["state"] == "online",
                              f"{cam} online")
        assert status["device_id"] == cam and status["agent_id"] == MULTI, status
    agent = _status_when(
        fleet, MULTI, lambda s: s["state"] == "online"
        and all(s.get("cameras", {}).get(c) == "online" for c in CAMERAS),
        f"{MULTI} online with both cameras online")
    assert agent["device_id"] == MULTI and "agent_id" not in agent, agent
    assert agent["device"] == "CPU" and "GPU" in json.dumps(agent["device_errors"]), agent
    health = _health(dev)
    assert health["state"] == "online", health
    for cam in CAMERAS:
        assert health["cameras"][cam]["state"] == "online", health["cameras"]
        assert health["cameras"][cam]["counted"] is True, health["cameras"]
        assert health["masks_by_camera"][cam] >= 1, health["masks_by_camera"]
    # nothing is published under the device id but the agent's own status and stats
    spy = fleet.probe("watcher", "--seconds", "3", "subscribe", f"segedge/{MULTI}/mask")
    assert spy["received"] == [], spy


def test_a_sender_gets_its_mask_reply_with_its_own_identity(fleet):
    dev = fleet.devices[MULTI]
    frame = fleet.rig.rundir.parent / "sender-frame.jpg"
    # 80 % red on the left (the stand-in's frames have 25..75 %): the reply is this image's
    img = np.zeros((96, 128, 3), np.uint8)  # BGR
    img[:, :102, 2], img[:, 102:, 0] = 220, 220
    frame.write_bytes(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    reply_topic = f"segedge/{SENDER}/reply/{uuid.uuid4().hex[:8]}"
    correlation = uuid.uuid4().bytes.hex()
    out = fleet.probe(SENDER, "--payload-file", str(frame), "--response-topic", reply_topic,
                      "--correlation", correlation, "--seconds", "20", "request",
                      f"segedge/{MULTI}/frames_in/{SENDER}")
    assert out["connack"] == 0, out
    assert out["suback"] and out["suback"][0] < 128, out
    assert out["puback"] == 0, out
    replies = [r for r in out["replies"] if r["topic"] == reply_topic]
    assert len(replies) == 1, f"{out}\n{dev.journal()}"
    reply = replies[0]
    assert reply["correlation"] == correlation, reply
    mask = reply["payload"]
    assert isinstance(mask, dict) and "error" not in mask, mask
    assert mask["device_id"] == SENDER and mask["encoding"] == "png" and mask["mask"], mask
    assert 0.7 < _pet(mask) < 0.9, mask["coverage"]
    assert (mask["model"]["name"], mask["model"]["version"]) == ("tiny", "0.0.1"), mask
    # the sender is a camera of the agent's now, under its own id; it does not count
    status = _status_when(fleet, SENDER, lambda s: s.get("agent_id") == MULTI,
                          f"{SENDER}'s status from {MULTI}")
    assert status["device_id"] == SENDER and status["state"] in ("online", "degraded"), status
    agent = _status_when(fleet, MULTI, lambda s: SENDER in s.get("cameras", {}),
                         f"{MULTI}'s status to name {SENDER}")
    assert agent["state"] == "online", agent
    assert all(agent["cameras"][c] == "online" for c in CAMERAS), agent

    def sender_counted():  # health.json is rewritten every stats interval (2 s here)
        health = _health(dev)
        return health if health.get("masks_by_camera", {}).get(SENDER) else None

    health = wait_for(sender_counted, 15, 0.5, "the sender's masks in health.json")
    assert health["cameras"][SENDER]["counted"] is False, health["cameras"]
    assert health["state"] == "online", health


def test_a_sender_may_write_only_its_own_frames_in_topic(fleet):
    before = fleet.status(MULTI)
    for topic, retain in ((f"segedge/{MULTI}/status", ["--retain"]),
                          ("segedge/dev-cpu/frames_in/" + SENDER, []),
                          (f"segedge/{MULTI}/frames_in/someone-else", []),
                          (f"segedge/{CAMERAS[0]}/paused/set", [])):
        out = fleet.probe(SENDER, "publish", topic, *retain)
        assert out["connack"] == 0 and out["puback"] == NOT_AUTHORISED, (topic, out)
    after = fleet.status(MULTI)
    assert after["state"] == before["state"] == "online", (before, after)
    assert after["session"] == before["session"] and "probe" not in json.dumps(after), after
    assert _health(fleet.devices[MULTI])["state"] == "online"
    # a subscriber is not a sender; the sender reads only its own results
    out = fleet.probe("watcher", "publish", f"segedge/{MULTI}/frames_in/{SENDER}")
    assert out["connack"] == 0 and out["puback"] == NOT_AUTHORISED, out
    spy = fleet.probe(SENDER, "--seconds", "3", "subscribe", f"segedge/{CAMERAS[0]}/mask")
    assert spy["connack"] == 0 and spy["received"] == [], spy
