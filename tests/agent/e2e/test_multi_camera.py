"""Many cameras on one agent and frames from other devices, on a real Mosquitto and OpenVINO.

One agent process, one compiled model: a file camera, an HTTP MJPEG camera and a
sender publishing JPEGs over MQTT. The MJPEG camera is killed and comes back while the
others keep publishing; per-camera statuses and stats say what happened. Then the
frames-in service as an RPC: MQTT 5 request/response with correlation data, and the
refusals (garbage, oversized, unknown format) answered and counted.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid

import cv2
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.agent.helpers import (
    agent_config,
    scene,
    subscribe_and_start,
    validator,
    wait_until,
)
from tests.helpers.mjpeg_server import MjpegServer
from tools.broker import free_port

pytestmark = pytest.mark.e2e


class Sender:
    """A small board: publishes a JPEG of the test scene to the agent every ``period``."""

    def __init__(self, host: str, port: int, topic: str, period: float = 0.2) -> None:
        self.topic, self.period = topic, period
        self.stop = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  protocol=mqtt.MQTTv5)
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        i = 0
        while not self.stop.wait(self.period):
            jpg = cv2.imencode(".jpg", scene(i))[1].tobytes()
            self.client.publish(self.topic, jpg, qos=0)
            i += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.client.disconnect()
        self.client.loop_stop()


class Everything:
    """Every message under ``segedge/#``: (camera id, kind, JSON or raw, retained)."""

    def __init__(self, host: str, port: int) -> None:
        self.items = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  protocol=mqtt.MQTTv5)
        subscribe_and_start(self.client, "segedge/#", self._on_message, host, port)

    def _on_message(self, client, userdata, msg) -> None:
        parts = msg.topic.split("/")
        try:
            data = json.loads(msg.payload)
        except ValueError:
            data = {"raw": bytes(msg.payload)}
        with self.lock:
            self.items.append((parts[1], "/".join(parts[2:]), data, bool(msg.retain),
                               time.monotonic()))

    def of(self, camera: str, kind: str, since: float = 0.0):
        with self.lock:
            return [d for c, k, d, _, t in self.items if c == camera and k == kind and t >= since]

    def state(self, camera: str):
        statuses = self.of(camera, "status")
        return statuses[-1]["state"] if statuses else None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_three_cameras_one_model_and_a_camera_that_dies_and_returns(
        broker, tiny_bundle, clip, unique_id, agents):
    agent_id = unique_id
    file_id, mjpeg_id, esp_id = f"{agent_id}-file", f"{agent_id}-mjpeg", f"{agent_id}-esp"
    cam = MjpegServer(lambda i: scene(i), free_port(), fps=10).start()
    everything = Everything(broker.host, broker.port)
    sender = None
    try:
        config = agent_config(tiny_bundle, "", broker.host, broker.port, agent_id,
                              source={"loop": True, "stall_timeout_s": 2.0,
                                      "reconnect_max_s": 1.0},
                              output={"stats_interval_s": 1.0, "max_publish_fps": 0.0},
                              frames_in={"enabled": True, "senders": [esp_id],
                                         "stall_timeout_s": 5.0})
        del config["source"]["uri"]
        config["cameras"] = [{"id": file_id, "uri": str(clip), "fps": 10.0},
                             {"id": mjpeg_id, "uri": cam.url}]
        agent = agents(config)
        sender = Sender(broker.host, broker.port, f"segedge/{agent_id}/frames_in/{esp_id}")
        ids = (file_id, mjpeg_id, esp_id)
        assert wait_until(lambda: all(len(everything.of(c, "mask")) >= 5 for c in ids), 40), \
            agent.log()
        assert wait_until(lambda: all(everything.state(c) == "online" for c in ids)
                          and everything.state(agent_id) == "online", 10), agent.log()
        for c in ids:  # each camera's messages carry its own id
            mask = everything.of(c, "mask")[-1]
            assert mask["device_id"] == c and 0.05 < mask["coverage"]["pet"] < 0.6, mask
            validator("mask").validate(mask)
            status = everything.of(c, "status")[-1]
            assert status["agent_id"] == agent_id
            validator("status").validate(status)
        agent_status = everything.of(agent_id, "status")[-1]
        assert agent_status["cameras"] == {file_id: "online", mjpeg_id: "online",
                                           esp_id: "online"}
        validator("status").validate(agent_status)

        # the MJPEG camera dies: it (and the agent) turn degraded, the others go on
        killed = time.monotonic()
        cam.stop()
        assert wait_until(lambda: everything.state(mjpeg_id) == "degraded", 15), agent.log()
        reason = everything.of(mjpeg_id, "status")[-1]["reason"]
        assert reason.startswith("source:"), reason
        assert wait_until(lambda: everything.state(agent_id) == "degraded", 5)
        assert f"{mjpeg_id}: source:" in everything.of(agent_id, "status")[-1]["reason"]
        time.sleep(2.0)
        for c in (file_id, esp_id):
            assert len(everything.of(c, "mask", since=killed)) >= 8, (c, agent.log())
            assert everything.state(c) == "online"
        back = time.monotonic()
        cam.start()
        assert wait_until(lambda: everything.state(mjpeg_id) == "online"
                          and everything.of(mjpeg_id, "mask", since=back), 20), agent.log()
        assert wait_until(lambda: everything.state(agent_id) == "online", 5)
        # the file and sender cameras never said anything but online after their start
        for c in (file_id, esp_id):
            states = [s["state"] for s in everything.of(c, "status")]
            assert states[states.index("online"):] == ["online"] * (
                len(states) - states.index("online")), states

        # per-camera stats: their own counts; the agent's are the sums and list cameras
        time.sleep(1.5)
        stats = {c: everything.of(c, "stats")[-1] for c in ids}
        for c, s in stats.items():
            validator("stats").validate(s)
            assert s["device_id"] == c and s["agent_id"] == agent_id
            assert s["frames"]["inferred"] > 0 and s["frames"]["published"] > 0, s
            assert s["latency_ms"]["p50"] is not None or s["latency_ms"]["count"] == 0
        agent_stats = everything.of(agent_id, "stats")[-1]
        validator("stats").validate(agent_stats)
        assert set(agent_stats["cameras"]) == set(ids)
        assert agent_stats["cameras"][esp_id]["sender"] is True
        assert agent_stats["frames"]["inferred"] >= sum(
            s["frames"]["inferred"] for s in stats.values()) - 50
        assert agent.terminate() == 0, agent.log()
        assert wait_until(lambda: all(everything.state(c) == "offline"
                                      for c in ids + (agent_id,)), 5)
        assert "Traceback" not in agent.log()
    finally:
        if sender:
            sender.close()
        cam.stop()
        everything.close()


class Rpc:
    """An MQTT 5 client calling the frames-in service: publish with a response topic."""

    def __init__(self, host: str, port: int, reply_topic: str) -> None:
        self.reply_topic = reply_topic
        self.replies = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  protocol=mqtt.MQTTv5)
        subscribe_and_start(self.client, reply_topic, self._on_message, host, port)

    def _on_message(self, client, userdata, msg) -> None:
        corr = getattr(msg.properties, "CorrelationData", None)
        with self.lock:
            self.replies[bytes(corr) if corr else None] = json.loads(msg.payload)

    def call(self, topic: str, payload: bytes, timeout: float = 10.0):
        corr = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = corr
        self.client.publish(topic, payload, qos=1, properties=props)
        assert wait_until(lambda: corr in self.replies, timeout), f"no reply to {payload[:16]}"
        return self.replies[corr]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_frames_in_request_response_and_refusals(broker, tiny_bundle, unique_id, agents):
    agent_id, sender = unique_id, f"{unique_id}-pi"
    config = agent_config(tiny_bundle, "", broker.host, broker.port, agent_id,
                          frames_in={"enabled": True, "max_bytes": 20_000})
    del config["source"]
    config["cameras"] = []  # a pure inference service
    agent = agents(config)
    everything = Everything(broker.host, broker.port)
    rpc = Rpc(broker.host, broker.port, f"segedge/{sender}/reply/test")
    topic = f"segedge/{agent_id}/frames_in/{sender}"
    try:
        assert wait_until(lambda: everything.state(agent_id) == "online", 30), agent.log()
        jpg = cv2.imencode(".jpg", scene(3))[1].tobytes()
        reply = rpc.call(topic, jpg)
        validator("mask").validate(reply)
        assert reply["device_id"] == sender and reply["frame_id"] == 1
        assert 0.05 < reply["coverage"]["pet"] < 0.6 and reply["frame_width"] == 96
        as_json = json.dumps({"image": base64.b64encode(jpg).decode(), "frame_id": 42}).encode()
        assert rpc.call(topic, as_json)["frame_id"] == 42  # the sender's own numbering
        for payload, needle in [(b"\x00garbage", "unknown format"),
                                (b"GIF89a" + b"\x00" * 100, "unknown format"),
                                (b"\xff\xd8\xff" + b"\x00" * 30_000, "over frames_in.max_bytes"),
                                (b"\xff\xd8\xff\xe0" + b"\x01" * 200, "undecodable image"),
                                (b'{"image": "not base64!"}', "not valid base64")]:
            error = rpc.call(topic, payload)
            validator("frame_error").validate(error)
            assert needle in error["error"] and error["device_id"] == sender, error
        assert rpc.call(topic, jpg)["frame_id"] == 43  # still serving after all that
        # a stats message sent between the last refusal and frame 43's reply shows 5 / 2:
        # wait for the one that has counted everything
        counted = {"refused": 5, "replied": 3, "inferred": 3}
        assert wait_until(lambda: everything.of(sender, "stats") and {
            k: everything.of(sender, "stats")[-1]["frames"][k] for k in counted} == counted,
            10), everything.of(sender, "stats")[-1:]
        assert len(everything.of(sender, "mask")) == 3  # also on the camera's mask topic
        # a sender id that is the agent's own is refused and counted by the agent (its
        # answer goes to that id's reply tree, the only one a frame on that topic may name)
        own = Rpc(broker.host, broker.port, f"segedge/{agent_id}/reply/test")
        try:
            error = own.call(f"segedge/{agent_id}/frames_in/{agent_id}", jpg)
        finally:
            own.close()
        assert "not usable" in error["error"]
        assert wait_until(lambda: everything.of(agent_id, "stats")[-1]["frames"]["refused"] >= 1,
                          10)
        # one log line per sender per minute, however many refusals
        assert agent.log().count(f"frame refused from {sender}") == 1, agent.log()
        assert everything.state(agent_id) == "online" and agent.alive()
        assert agent.terminate() == 0 and "Traceback" not in agent.log()
    finally:
        rpc.close()
        everything.close()


def test_example_multi_camera_config_and_send_frame_client_run(own_broker, tmp_path):
    """examples/multi-camera.toml from the repository root on the demo clip and bundle:
    three cameras publish; examples/send_frame.py gets a mask back (port from the env)."""
    import os
    import signal
    import subprocess
    import sys

    from tests.agent.helpers import ROOT

    everything = Everything(own_broker.host, own_broker.port)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGEDGE_")}
    env.update(PYTHONPATH=str(ROOT), SEGEDGE_MQTT_PORT=str(own_broker.port))
    log = tmp_path / "example.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "--config",
                                 "examples/multi-camera.toml"], cwd=str(ROOT), env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        cameras = ("front-door", "garden", "garage")
        assert wait_until(lambda: all(everything.of(c, "mask") for c in cameras)
                          and everything.state("edge-01") == "online", 60), log.read_text()
        client = subprocess.run(
            [sys.executable, "examples/send_frame.py", "--port", str(own_broker.port),
             "--agent", "edge-01", "--sender", "doorbell", "--video", "demo/clip.mp4",
             "--frame", "100", "--save", str(tmp_path / "mask.png")],
            cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=60)
        assert client.returncode == 0, client.stdout + client.stderr + log.read_text()
        assert "mask 256x256 for frame 1 of doorbell" in client.stdout, client.stdout
        mask = cv2.imread(str(tmp_path / "mask.png"), cv2.IMREAD_UNCHANGED)
        assert mask is not None and 0.1 < (mask == 1).mean() < 0.9  # the demo frame's pet
        assert wait_until(lambda: everything.state("doorbell") == "online", 10)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        everything.close()
