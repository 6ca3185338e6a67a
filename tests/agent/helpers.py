"""Agent test helpers: clips, TOML configs, an MQTT collector, the agent as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "edge_agent" / "protocol" / "schemas"


def scene(i: int, size: Tuple[int, int] = (80, 96)) -> np.ndarray:
    """Blue background with a red box moving right: 'pet' where red > blue (BGR image)."""
    h, w = size
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :, 0] = 200
    x = (i * 3) % max(1, w - w // 3)
    img[h // 4: 3 * h // 4, x: x + w // 3] = (0, 0, 220)
    return img


def write_clip(path: Path, frames: int = 40, fps: float = 20.0,
               size: Tuple[int, int] = (80, 96)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (size[1], size[0]))
    for i in range(frames):
        writer.write(scene(i, size))
    writer.release()
    return path


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)


def _is_tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def to_toml(data: Dict[str, Any]) -> str:
    """Keys, then [sections], then [[arrays of tables]] (e.g. ``cameras``)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items()
             if not isinstance(v, dict) and not _is_tables(v)]
    for section, values in data.items():
        if isinstance(values, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    for name, tables in data.items():
        if _is_tables(tables):
            for table in tables:
                lines.append(f"[[{name}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def agent_config(bundle: Path, uri: str, host: str, port: int, device_id: str,
                 **sections: Dict[str, Any]) -> Dict[str, Any]:
    cfg: Dict[str, Any] = {
        "device_id": device_id, "log_level": "INFO",
        "source": {"uri": uri, "loop": True, "stall_timeout_s": 3.0, "reconnect_max_s": 1.0},
        "model": {"bundle": str(bundle), "target": "cpu", "devices": ["CPU"], "num_requests": 2},
        "output": {"stats_interval_s": 1.0, "max_publish_fps": 0.0},
        "mqtt": {"host": host, "port": port, "prefix": "segedge", "keepalive_s": 5},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return cfg


def wait_until(pred: Callable[[], Any], timeout: float, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


def subscribe_and_start(client: Any, topic: str, on_message: Any, host: str, port: int) -> None:
    """Subscribe ``topic`` at QoS 1 on every (re)connect, start paho's loop, and return once
    the first subscription is acknowledged."""
    subscribed = threading.Event()
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = on_message
    client.reconnect_delay_set(0.2, 1)
    client.connect_async(host, port, keepalive=10)
    client.loop_start()
    if not subscribed.wait(10):
        raise RuntimeError(f"could not subscribe to {topic} on {host}:{port}")


class Collector:
    """Subscribe to ``<prefix>/<device>/+`` and keep every message (JSON decoded)."""

    def __init__(self, host: str, port: int, device_id: str, prefix: str = "segedge") -> None:
        self.topic = f"{prefix}/{device_id}/+"
        self.messages: List[Tuple[str, Dict[str, Any], bool, float]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  protocol=mqtt.MQTTv5)
        subscribe_and_start(self.client, self.topic, self._on_message, host, port)

    def _on_message(self, client, userdata, msg) -> None:
        try:
            data = json.loads(msg.payload)
        except ValueError:  # the overlay topic carries JPEG bytes
            data = {"raw": bytes(msg.payload)}
        with self.lock:
            self.messages.append((msg.topic.rsplit("/", 1)[-1], data, bool(msg.retain),
                                  time.monotonic()))

    def of(self, kind: str) -> List[Dict[str, Any]]:
        with self.lock:
            return [m[1] for m in self.messages if m[0] == kind]

    def retained(self, kind: str) -> List[Dict[str, Any]]:
        with self.lock:
            return [m[1] for m in self.messages if m[0] == kind and m[2]]

    def last_state(self) -> Optional[str]:
        statuses = self.of("status")
        return statuses[-1]["state"] if statuses else None

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class AgentProcess:
    """``python -m edge_agent --config FILE`` with its log in a file."""

    def __init__(self, workdir: Path, config: Dict[str, Any], env: Optional[Dict[str, str]] = None,
                 args: Tuple[str, ...] = ()) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "agent.toml"
        self.config_path.write_text(to_toml(config))
        self.log_path = workdir / "agent.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SEGEDGE_")}
        full_env.update(env or {})
        full_env["PYTHONPATH"] = str(ROOT)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge_agent", "--config", str(self.config_path), *args],
                stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=str(ROOT))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self, timeout: float = 10.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> int:
        if self.alive():
            self.proc.kill()
        return self.proc.wait(10)


class PersistentSubscriber:
    """A QoS 1 subscriber with a persistent session (clean_session false)."""

    def __init__(self, host: str, port: int, device_id: str) -> None:
        self.messages: List[Dict[str, Any]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=f"persist-{device_id}", clean_session=False,
                                  protocol=mqtt.MQTTv311)
        subscribe_and_start(self.client, f"segedge/{device_id}/+", self._on_message, host, port)

    def _on_message(self, client, userdata, msg) -> None:
        kind = msg.topic.rsplit("/", 1)[-1]
        if kind in ("stats", "status"):
            with self.lock:
                self.messages.append({"kind": kind, **json.loads(msg.payload)})

    def of(self, kind: str) -> List[Dict[str, Any]]:
        with self.lock:
            return [m for m in self.messages if m["kind"] == kind]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def gaps(seqs: List[int]) -> List[int]:
    """Sequence numbers missing from 1..max(seqs)."""
    got = set(seqs)
    return [s for s in range(1, max(got) + 1) if s not in got] if got else []


def validator(kind: str):
    import jsonschema

    schema = json.loads((SCHEMAS / f"{kind}.schema.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def forged_jpeg(width: int = 4096, height: int = 4096) -> bytes:
    """An 8x8 JPEG (~630 bytes) whose frame header claims ``width`` x ``height``: libjpeg
    fills in the missing data, a 50 MB frame for 4096x4096 (issue 17, finding 7)."""
    import struct

    raw = bytearray(cv2.imencode(".jpg", np.full((8, 8, 3), 120, np.uint8))[1].tobytes())
    pos = 2
    while pos + 4 <= len(raw):
        marker, length = raw[pos + 1], struct.unpack(">H", raw[pos + 2:pos + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            raw[pos + 5:pos + 9] = struct.pack(">HH", height, width)
            return bytes(raw)
        pos += 2 + length
    raise AssertionError("no SOF marker")
