"""Issue 10, wired: commands, replies, retained states, overlays and HA discovery from a
real agent process on a real Mosquitto (paho clients as the integrator's side).

Three agent processes in all (MQTT 5 with discovery; MQTT 3.1.1 with persistence, run
twice) plus the shipped example; each test drives one agent through many commands to
keep CI time low.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.protocol.encoding import decode
from tests.agent.control.test_homeassistant import assert_known_to_ha
from tests.agent.helpers import ROOT, agent_config, validator, wait_until

pytestmark = pytest.mark.e2e


class Client:
    """Everything on ``segedge/<id>/#`` and ``<discovery>/#``, raw, plus MQTT 5 requests."""

    def __init__(self, host: str, port: int, topics: List[str], protocol=mqtt.MQTTv5) -> None:
        self.messages: List[Tuple[str, bytes, bool, float]] = []
        self.replies: Dict[bytes, Dict[str, Any]] = {}
        self.lock = threading.Lock()
        # replies come only under the addressed id's reply tree (issue 17)
        self.token = uuid.uuid4().hex[:8]
        self.reply_topic = f"segedge/+/reply/{self.token}"
        self.subscribed = threading.Event()
        self.protocol = protocol
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  protocol=protocol)
        subs = [(t, 1) for t in topics] + ([(self.reply_topic, 1)]
                                           if protocol == mqtt.MQTTv5 else [])
        self.client.on_connect = lambda c, *_: c.subscribe(subs)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def _on_message(self, client, userdata, msg) -> None:
        with self.lock:
            if msg.topic.endswith(f"/reply/{self.token}"):
                corr = getattr(msg.properties, "CorrelationData", b"")
                self.replies[bytes(corr)] = json.loads(msg.payload)
            else:
                self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain),
                                      time.monotonic()))

    def send(self, topic: str, payload: str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def request(self, topic: str, payload: str, timeout: float = 10.0) -> Dict[str, Any]:
        """MQTT 5 request/response: the reply with our correlation data."""
        corr = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "/".join(topic.split("/")[:2] + ["reply", self.token])
        props.CorrelationData = corr
        self.client.publish(topic, payload, qos=1, properties=props).wait_for_publish(5)
        got = wait_until(lambda: self.replies.get(corr), timeout)
        assert got, f"no reply to {topic} {payload!r}"
        return got

    def on(self, topic: str, since: float = 0.0) -> List[bytes]:
        with self.lock:
            return [m[1] for m in self.messages if m[0] == topic and m[3] >= since]

    def json(self, topic: str, since: float = 0.0) -> List[Dict[str, Any]]:
        return [json.loads(p) for p in self.on(topic, since)]

    def last(self, topic: str) -> Optional[bytes]:
        got = self.on(topic)
        return got[-1] if got else None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained_now(host: str, port: int, topic: str, wait: float = 1.0) -> Dict[str, bytes]:
    """What the broker holds retained under ``topic`` (a fresh subscriber's replay)."""
    c = Client(host, port, [topic])
    time.sleep(wait)
    with c.lock:
        got = {t: p for t, p, r, _ in c.messages if r}
    c.close()
    return got


@pytest.fixture
def client_factory():
    made: List[Client] = []

    def make(*args, **kw) -> Client:
        c = Client(*args, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def _status(c: Client, base: str) -> Dict[str, Any]:
    return json.loads(c.last(f"{base}/status"))


def _masks_between(c: Client, base: str, t0: float, t1: float) -> int:
    with c.lock:
        return sum(1 for t, _, _, ts in c.messages if t == f"{base}/mask" and t0 <= ts < t1)


def test_mqtt5_commands_overlay_discovery_and_reload(broker, tiny_bundle, clip, unique_id,
                                                     agents, client_factory, tmp_path):
    from tests.helpers.tiny_bundle import make_tiny_bundle

    # the configured bundle is a `current` link, as deployed; v2 waits beside it
    models = tmp_path / "models"
    shutil.copytree(tiny_bundle, models / "0.0.1")
    v2 = make_tiny_bundle(tmp_path / "v2", version="0.0.2", targets=("cpu",))
    shutil.copytree(v2, models / "0.0.2")
    (models / "current").symlink_to("0.0.1")
    health = tmp_path / "state" / "health.json"
    dprefix = f"ha-{unique_id}"
    base = f"segedge/{unique_id}"
    c = client_factory(broker.host, broker.port, [f"{base}/#", f"{dprefix}/#"])
    agent = agents(agent_config(
        models / "current", str(clip), broker.host, broker.port, unique_id,
        health_file=str(health),
        output={"stats_interval_s": 1.0, "max_publish_fps": 0.0, "overlay_interval_s": 0.5},
        homeassistant={"enabled": True, "discovery_prefix": dprefix},
        source={"fps": 20.0}))
    assert wait_until(lambda: len(c.on(f"{base}/mask")) >= 5
                      and len(c.on(f"{base}/overlay")) >= 1, 30), agent.log()
    assert wait_until(lambda: _status(c, base)["state"] == "online", 10), agent.log()
    session, connection = _status(c, base)["session"], _status(c, base)["connection"]

    # retained states and settings, valid against the schema
    held = retained_now(broker.host, broker.port, f"{base}/#")
    assert held[f"{base}/paused/state"] == b"OFF"
    assert held[f"{base}/max_publish_fps/state"] == b"0.0"
    assert held[f"{base}/mask_encoding/state"] == b"png"
    settings = json.loads(held[f"{base}/settings"])
    validator("settings").validate(settings)
    assert settings["device_id"] == unique_id and settings["paused"] is False

    # discovery: retained, accepted by HA 2024.1.6's key lists, image entity present
    disc = retained_now(broker.host, broker.port, f"{dprefix}/#")
    assert len(disc) == 14, sorted(disc)  # with [quality]: confidence, drift
    for topic, payload in disc.items():
        cfg = json.loads(payload)
        assert_known_to_ha(topic, cfg)
        assert cfg["device"]["identifiers"] == [f"segedge_{unique_id}"]
        assert cfg["device"]["model"] == "tiny 0.0.1 (INT8)"
    assert f"{dprefix}/image/segedge_{unique_id}/overlay/config" in disc

    # the overlay stream: JPEGs of the frame's size, about every 0.5 s
    jpg = cv2.imdecode(np.frombuffer(c.last(f"{base}/overlay"), np.uint8), cv2.IMREAD_COLOR)
    assert jpg is not None and jpg.shape[:2] == (80, 96)

    # refusals: a reply each, nothing changes
    reply_schema = validator("command_reply")
    for topic, payload, reason in [
            ("max_publish_fps/set", "500", "out of range"),
            ("max_publish_fps/set", "NaN", "max_publish_fps"),
            ("paused/set", "maybe", "expected ON or OFF"),
            ("mask_encoding/set", "jpeg", "mask_encoding"),
            ("frame_every/set", "{not json", "not valid JSON"),
            ("explode/set", "1", "unknown command")]:
        r = c.request(f"{base}/{topic}", payload)
        reply_schema.validate(r)
        assert r["result"] == "refused" and reason in r["reason"], r
        assert r["changed"] is False
    assert json.loads(retained_now(broker.host, broker.port, f"{base}/settings",
                                   0.5)[f"{base}/settings"]) == settings

    # throttle: 2 masks/s (generous bound on a loaded machine), then unlimited again
    r = c.request(f"{base}/max_publish_fps/set", "2")
    assert r["result"] == "accepted" and r["value"] == 2.0 and r["changed"], r
    t0 = time.monotonic()
    time.sleep(3.0)
    throttled = _masks_between(c, base, t0 + 0.5, t0 + 3.0)
    assert 1 <= throttled <= 7, throttled  # 2.5 s at 2/s = 5 (+ half-period credit)
    assert c.request(f"{base}/max_publish_fps/set", "0")["result"] == "accepted"

    # mask encoding switches live
    assert c.request(f"{base}/mask_encoding/set", '"rle"')["value"] == "rle"
    t1 = time.monotonic()
    assert wait_until(lambda: c.json(f"{base}/mask", t1 + 0.3), 10)
    later = c.json(f"{base}/mask", t1 + 0.3)
    assert all(m["encoding"] == "rle" for m in later)
    assert decode(later[-1]["mask"], "rle").shape == (later[-1]["height"], later[-1]["width"])

    # snapshot: frame + mask + overlay of the same frame (frame_every is 0: no frames else)
    assert not c.on(f"{base}/frame")
    t2 = time.monotonic()
    r = c.request(f"{base}/snapshot/set", "PRESS")
    assert r["result"] == "accepted", r
    frames = c.json(f"{base}/frame", t2)
    assert len(frames) == 1, len(frames)
    validator("frame").validate(frames[0])
    assert frames[0]["frame_id"] in [m["frame_id"] for m in c.json(f"{base}/mask", t2)]
    assert c.on(f"{base}/overlay", t2)

    # frame_every applies live: a frame before every 2nd mask, then none again
    assert c.request(f"{base}/frame_every/set", "2")["value"] == 2
    t2b = time.monotonic()
    assert wait_until(lambda: len(c.json(f"{base}/frame", t2b)) >= 3, 10)
    sent = {f["frame_id"] for f in c.json(f"{base}/frame", t2b)}
    time.sleep(0.3)  # each frame goes out just before its mask
    masks = [m["frame_id"] for m in c.json(f"{base}/mask", t2b)]
    assert sent <= set(masks) and len(sent) < len(masks), (sent, masks)
    assert c.request(f"{base}/frame_every/set", "0")["value"] == 0
    time.sleep(0.5)
    t2c = time.monotonic()
    time.sleep(1.0)
    assert not c.on(f"{base}/frame", t2c) and c.on(f"{base}/mask", t2c)

    # pause: masks stop, status degraded with the reason (online would be a lie), health
    # file too; resume: masks and online again
    r = c.request(f"{base}/paused/set", "ON")
    assert r["result"] == "accepted" and r["value"] is True
    assert wait_until(lambda: _status(c, base)["reason"] == "paused by command", 5)
    assert _status(c, base)["state"] == "degraded"
    assert c.last(f"{base}/paused/state") == b"ON"
    assert wait_until(lambda: json.loads(health.read_text())["components"].get("commands")
                      == "paused by command", 5)
    time.sleep(0.5)  # results in flight when the pause came are dropped
    t3 = time.monotonic()
    time.sleep(1.5)
    assert _masks_between(c, base, t3, time.monotonic()) == 0
    assert c.request(f"{base}/paused/set", "OFF")["value"] is False
    assert wait_until(lambda: _status(c, base)["state"] == "online", 5)
    assert wait_until(lambda: c.on(f"{base}/mask", time.monotonic() - 0.5), 5)

    # a flood of 2,000 commands: masks keep flowing, the agent stays up and says so
    t4 = time.monotonic()
    flood = threading.Thread(target=lambda: [
        c.client.publish(f"{base}/{'frame_every' if i % 2 else 'bogus'}/set", str(i % 7), qos=0)
        for i in range(2000)])
    flood.start()
    flood.join(30)
    time.sleep(2.0)
    assert agent.alive()
    assert _masks_between(c, base, t4, time.monotonic()) >= 10, agent.log()[-2000:]
    assert "dropping" in agent.log() or "dropped because the queue was full" in agent.log()
    assert c.request(f"{base}/frame_every/set", "0")["result"] == "accepted"

    # reload after the deploy switched `current`: new model, same MQTT connection
    (models / "current").unlink()
    (models / "current").symlink_to("0.0.2")
    r = c.request(f"{base}/reload/set", "PRESS", timeout=30)
    assert r["result"] == "accepted", r
    assert wait_until(lambda: _status(c, base)["model"]["version"] == "0.0.2", 5)
    st = _status(c, base)
    assert (st["session"], st["connection"]) == (session, connection)  # no reconnect
    t5 = time.monotonic()
    assert wait_until(lambda: [m for m in c.json(f"{base}/mask", t5)
                               if m["model"]["version"] == "0.0.2"], 10)
    assert wait_until(lambda: json.loads(disc_now(broker, dprefix, unique_id))["device"]["model"]
                      == "tiny 0.0.2 (INT8)", 5)

    # a tampered bundle is refused; 0.0.2 keeps serving
    weights = models / "0.0.2" / "cpu" / "model.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    r = c.request(f"{base}/reload/set", "PRESS", timeout=30)
    assert r["result"] == "refused" and "sha256" in r["reason"], r
    t6 = time.monotonic()
    assert wait_until(lambda: len(c.json(f"{base}/mask", t6)) >= 3, 10)
    assert all(m["model"]["version"] == "0.0.2" for m in c.json(f"{base}/mask", t6))
    st = _status(c, base)
    assert st["state"] == "online" and (st["session"], st["connection"]) == (session, connection)

    # a hostile quality reference in the manifest is refused the same way (issue 20)
    manifest = models / "0.0.2" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["reference"] = {"statistic": "uncertain", "threshold": 0.9, "splits": {"val": {
        "uncertain": [0.1, 7.0], "margin": [0.9, 0.8], "coverage": [0.4, 0.4]}}}
    manifest.write_text(json.dumps(data))
    r = c.request(f"{base}/reload/set", "PRESS", timeout=30)
    assert r["result"] == "refused" and "reference" in r["reason"], r
    t7 = time.monotonic()
    assert wait_until(lambda: len(c.json(f"{base}/mask", t7)) >= 3, 10)
    assert all(m["model"]["version"] == "0.0.2" for m in c.json(f"{base}/mask", t7))

    # nothing was written to disk: commands do not survive a restart by default
    assert not (health.parent / "commands.json").exists()
    assert agent.terminate() == 0


def disc_now(broker, dprefix: str, device: str) -> bytes:
    topic = f"{dprefix}/switch/segedge_{device}/paused/config"
    return retained_now(broker.host, broker.port, topic, 0.5).get(topic, b"null")


def test_mqtt311_state_replies_removals_and_persistence(broker, tiny_bundle, clip, unique_id,
                                                        agents, client_factory, tmp_path):
    dprefix = f"ha-{unique_id}"
    base = f"segedge/{unique_id}"
    # entities a previous run (discovery on) left behind
    stale = [f"{dprefix}/switch/segedge_{unique_id}/paused/config",
             f"{dprefix}/image/segedge_{unique_id}/overlay/config"]
    pub = client_factory(broker.host, broker.port, ["none"], protocol=mqtt.MQTTv311)
    for topic in stale:
        pub.send(topic, '{"name": "old"}', retain=True)
    assert set(retained_now(broker.host, broker.port, f"{dprefix}/#", 0.5)) == set(stale)
    # a retained command waiting at the broker is replayed at subscribe: refused
    pub.send(f"{base}/frame_every/set", "9", retain=True)
    state_file = tmp_path / "private" / "commands.json"
    cfg = agent_config(tiny_bundle, str(clip), broker.host, broker.port, unique_id,
                       mqtt={"protocol": "3.1.1"}, homeassistant={"discovery_prefix": dprefix},
                       commands={"persist": True, "state_file": str(state_file)})
    c = client_factory(broker.host, broker.port, [f"{base}/#"], protocol=mqtt.MQTTv311)
    agent = agents(cfg)
    assert wait_until(lambda: len(c.on(f"{base}/mask")) >= 3, 30), agent.log()
    # discovery off: the same topics were published empty, HA removes those entities
    assert wait_until(lambda: not retained_now(broker.host, broker.port, f"{dprefix}/#", 0.5),
                      10)

    assert wait_until(lambda: "frame_every: retained commands are ignored" in agent.log(), 5)
    assert c.last(f"{base}/frame_every/state") == b"0" and not c.on(f"{base}/frame")
    pub.send(f"{base}/frame_every/set", "", retain=True)  # clear it
    # 3.1.1: the state topic is the reply, also to a refusal (which is a log line)
    t0 = time.monotonic()
    c.send(f"{base}/max_publish_fps/set", "999")
    assert wait_until(lambda: c.on(f"{base}/max_publish_fps/state", t0), 5)
    assert c.on(f"{base}/max_publish_fps/state", t0)[-1] == b"0.0"
    assert wait_until(lambda: "refused: max_publish_fps: 999.0 out of range" in agent.log(), 5)
    c.send(f"{base}/max_publish_fps/set", "3")
    c.send(f"{base}/paused/set", "ON")
    assert wait_until(lambda: c.last(f"{base}/paused/state") == b"ON", 5)
    assert c.last(f"{base}/max_publish_fps/state") == b"3.0"
    assert wait_until(lambda: state_file.exists(), 5)
    mode = stat.S_IMODE(os.stat(state_file).st_mode)
    assert mode == 0o600, oct(mode)
    saved = json.loads(state_file.read_text())[unique_id]
    assert saved["paused"] is True and saved["max_publish_fps"] == 3.0
    assert agent.terminate() == 0

    # persist = true: the restart comes back paused at 3 fps, and says so
    c2 = client_factory(broker.host, broker.port, [f"{base}/#"], protocol=mqtt.MQTTv311)
    agent2 = agents(cfg)
    assert wait_until(lambda: any(json.loads(p).get("reason") == "paused by command"
                                  for p in c2.on(f"{base}/status")), 30), agent2.log()
    assert wait_until(lambda: c2.last(f"{base}/paused/state") == b"ON", 5)
    assert c2.last(f"{base}/max_publish_fps/state") == b"3.0"
    time.sleep(1.0)
    assert not c2.on(f"{base}/mask"), "a paused agent published masks"
    # a snapshot works while paused: one frame, its mask and an overlay, then quiet again
    c2.send(f"{base}/snapshot/set", "PRESS")
    assert wait_until(lambda: c2.on(f"{base}/frame") and c2.on(f"{base}/overlay")
                      and c2.on(f"{base}/mask"), 10), agent2.log()
    time.sleep(1.0)
    assert len(c2.on(f"{base}/mask")) == 1 and len(c2.on(f"{base}/frame")) == 1
    c2.send(f"{base}/paused/set", "OFF")
    assert wait_until(lambda: c2.on(f"{base}/mask"), 10), agent2.log()
    assert agent2.terminate() == 0


def test_example_home_assistant_config_runs(broker, unique_id, tmp_path, client_factory):
    """examples/home-assistant.toml from the repository root, on the demo clip and bundle:
    discovery, overlay and masks arrive (device id and port overridden from the env)."""
    c = client_factory(broker.host, broker.port, [f"segedge/{unique_id}/#",
                                                  f"homeassistant/+/segedge_{unique_id}/#"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGEDGE_")}
    env.update(PYTHONPATH=str(ROOT), SEGEDGE_MQTT_PORT=str(broker.port),
               SEGEDGE_DEVICE_ID=unique_id)
    log = tmp_path / "example.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "--config",
                                 "examples/home-assistant.toml"], cwd=str(ROOT), env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: c.on(f"segedge/{unique_id}/overlay")
                          and c.on(f"segedge/{unique_id}/mask"), 40), log.read_text()
        assert wait_until(lambda: len({t for t, _, _, _ in c.messages
                                       if t.startswith("homeassistant/")}) == 14, 5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for topic in retained_now(broker.host, broker.port,
                                  f"homeassistant/+/segedge_{unique_id}/#", 0.5):
            c.send(topic, "", retain=True)  # leave the session's broker clean
