"""Issue 17 through the role's TLS broker and generated ACL, with the attackers' own
certificates: a frames-in sender and an operator try to kill the agent or make it
publish, with the device's rights, where they may not.

dev-gpu (conftest.py: MULTI) serves two cameras and the sender ``pi-door``. Before the
fix, one frame from the sender with the MQTT 5 response topic ``a/+/b`` killed the
agent (paho raised in the publish thread, exit 1), and a response topic such as a
camera's ``mask`` or the agent's ``status`` got the sender's mask published there.
"""

from __future__ import annotations

import json
import time
import uuid

import cv2
import numpy as np
import pytest

from tests.rig.conftest import CAMERAS, MULTI, SENDER
from tests.rig.rig import wait_for

pytestmark = [pytest.mark.rig, pytest.mark.timeout(900)]


def _health(dev) -> dict:
    out = dev.run("cat /var/lib/segedge/health.json").stdout
    return json.loads(out) if out.strip() else {}


def _watch(fleet, seconds: int, name: str):
    """Everything the subscriber ``tester`` sees under segedge/# and homeassistant/#,
    topic then payload per line, for ``seconds`` (mosquitto_sub in the background)."""
    log = fleet.rig.rundir.parent / f"{name}.log"
    argv = ["mosquitto_sub", "-V", "5", "-h", fleet.broker.ip, "-p", "8883",
            "--cafile", str(fleet.pki / "ca.crt"), "-t", "segedge/#", "-t", "homeassistant/#",
            "-v", "-W", str(seconds)]
    if fleet.auth == "certificate":
        argv += ["--cert", str(fleet.pki / "clients/tester.crt"),
                 "--key", str(fleet.pki / "clients/tester.key")]
    else:
        argv += ["-u", "tester", "-P", fleet.password("tester")]
    return fleet.rig.start_in_controller(argv, log), log


def _forged(lines, cam_topics):
    """Lines where a reply to the sender (its mask or frame_error) or a foreign payload
    landed outside the sender's own tree."""
    bad = []
    for line in lines:
        topic, _, payload = line.partition(" ")
        if topic.startswith(f"segedge/{SENDER}/"):
            continue  # the sender's own tree: its camera's messages and its replies
        forged_status = topic in cam_topics and payload and '"state"' not in payload
        if f'"device_id":"{SENDER}"' in payload or forged_status:
            bad.append(line[:200])
    return bad


def test_a_sender_cannot_kill_the_agent_or_publish_through_it(fleet):
    dev = fleet.devices[MULTI]
    before = fleet.status(MULTI)
    assert before["state"] == "online", before
    frame = fleet.rig.rundir.parent / "attack-frame.jpg"
    img = np.zeros((96, 128, 3), np.uint8)
    img[:, :64, 2] = 220
    frame.write_bytes(cv2.imencode(".jpg", img)[1].tobytes())
    watcher, log = _watch(fleet, 60, "attack-watch")
    time.sleep(3)
    foreign = ["a/+/b", "#", f"segedge/{CAMERAS[0]}/mask", f"segedge/{MULTI}/status",
               f"homeassistant/switch/segedge_{CAMERAS[0]}/paused/config",
               f"segedge/{CAMERAS[0]}/paused/set", f"segedge/{CAMERAS[1]}/reply/x"]
    sent = []
    for topic in foreign:
        corr = uuid.uuid4().bytes.hex()
        out = fleet.probe(SENDER, "--payload-file", str(frame), "--response-topic", topic,
                          "--correlation", corr, "--seconds", "3", "request",
                          f"segedge/{MULTI}/frames_in/{SENDER}")
        assert out["connack"] == 0 and out["puback"] == 0, (topic, out)  # the ACL lets it
        assert [r for r in out["replies"] if r["correlation"] == corr] == [], (topic, out)
        sent.append(corr)
    # the agent is still the same process, online, and still serves the sender
    time.sleep(3)
    after = fleet.status(MULTI)
    assert after["session"] == before["session"] and after["state"] == "online", \
        f"{after}\n{dev.journal()}"
    assert _health(dev)["state"] == "online", _health(dev)
    own = f"segedge/{SENDER}/reply/{uuid.uuid4().hex[:8]}"
    corr = uuid.uuid4().bytes.hex()
    out = fleet.probe(SENDER, "--payload-file", str(frame), "--response-topic", own,
                      "--correlation", corr, "--seconds", "20", "request",
                      f"segedge/{MULTI}/frames_in/{SENDER}")
    replies = [r for r in out["replies"] if r["topic"] == own and r["correlation"] == corr]
    assert len(replies) == 1 and replies[0]["payload"]["device_id"] == SENDER, out
    watcher.wait(90)
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    assert any(line.startswith(f"segedge/{CAMERAS[0]}/mask ") for line in lines), \
        "the watcher saw nothing: " + "\n".join(lines[:5])
    assert _forged(lines, {f"segedge/{MULTI}/status"}) == []
    for line in lines:
        topic = line.partition(" ")[0]
        assert topic not in ("a/+/b", "#", f"segedge/{CAMERAS[0]}/paused/set"), line[:200]
    journal = dev.journal(lines=500)
    assert f"frame refused from {SENDER}" in journal and "response topic" in journal, \
        journal[-3000:]
    assert "Traceback" not in journal, journal[-3000:]
    # the agent counts what it refused (its stats every few seconds)
    stats = wait_for(lambda: next((json.loads(m) for m in fleet.mqtt(
        f"segedge/{MULTI}/stats", timeout=15) if json.loads(m).get("requests", {}).get(
        "reply_topic_refused", 0) >= len(foreign)), None), 30, 1, "requests counted")
    assert stats["frames"]["publish_failed"] == 0, stats


def test_an_operator_command_with_a_foreign_response_topic_changes_nothing(fleet):
    dev, cam = fleet.devices[MULTI], CAMERAS[0]
    before = fleet.status(MULTI)
    state = fleet.mqtt(f"segedge/{cam}/paused/state", retained_only=True, timeout=10)
    assert state == ["OFF"], state
    for topic in (f"segedge/{MULTI}/status", "a/+/b", f"segedge/{SENDER}/reply/x"):
        corr = uuid.uuid4().bytes.hex()
        payload = fleet.rig.rundir.parent / "on.txt"
        payload.write_text("ON")
        out = fleet.probe("operator", "--payload-file", str(payload), "--response-topic",
                          topic, "--correlation", corr, "--seconds", "3", "request",
                          f"segedge/{cam}/paused/set")
        assert out["connack"] == 0 and out["puback"] == 0, out
        assert [r for r in out["replies"] if r["correlation"] == corr] == [], out
    time.sleep(2)
    assert fleet.mqtt(f"segedge/{cam}/paused/state", retained_only=True, timeout=10) == ["OFF"]
    after = fleet.status(MULTI)
    assert after["session"] == before["session"] and after["state"] == "online", after
    assert after["cameras"][cam] == "online" and _health(dev)["state"] == "online"
    # in the camera's own reply tree: applied and answered, then resumed
    try:
        corr = uuid.uuid4().bytes.hex()
        own = f"segedge/{cam}/reply/op"
        out = fleet.probe("operator", "--payload-file", str(payload), "--response-topic", own,
                          "--correlation", corr, "--seconds", "20", "request",
                          f"segedge/{cam}/paused/set")
        replies = [r for r in out["replies"] if r["correlation"] == corr]
        assert len(replies) == 1 and replies[0]["payload"]["result"] == "accepted", out
        wait_for(lambda: fleet.status(MULTI)["cameras"][cam] == "degraded", 20, 1,
                 f"{cam} paused")
    finally:
        payload.write_text("OFF")
        fleet.probe("operator", "--payload-file", str(payload), "publish",
                    f"segedge/{cam}/paused/set")
    wait_for(lambda: fleet.status(MULTI)["cameras"][cam] == "online", 30, 1, f"{cam} resumed")
