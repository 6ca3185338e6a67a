"""Run a real Home Assistant against a real Mosquitto and a real agent on the demo clip,
publish edge_agent.homeassistant's discovery messages, and record what HA created.

    python3.11 -m venv /tmp/ha && /tmp/ha/bin/pip install homeassistant==2024.1.6 python-dateutil
    PYTHONPATH=. .venv/bin/python scripts/ha_live_check.py --hass /tmp/ha/bin/hass \
        [--chromium /usr/bin/chromium --screenshot docs/img/ha-device.png]

The agent does not publish discovery, command states or the overlay stream yet (that
wiring is the next step), so this script publishes them for it, with the project's own
modules: discovery (retained), the ``<feature>/state`` topics from the config's values,
and an overlay JPEG every 2 s drawn by edge_agent.overlay from the agent's real frame and
mask messages. Then it reads HA's entity and device registries and the states HA
recorded (recorder SQLite), publishes the removals (discovery off) and checks the
entities are gone. The first HA start pip-installs its MQTT requirements (~1 min).
With ``--chromium`` it also loads HA's UI (loopback logs in without a password through
the ``trusted_networks`` provider, for this throwaway instance only), finishes the
onboarding over the API, prints the live states from the REST API and takes a
screenshot of the device page.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

import cv2
import numpy as np
import paho.mqtt.client as mqtt

from edge_agent import __version__, commands, encoding, overlay
from edge_agent import homeassistant as ha
from tools.broker import free_port
from tools.integrations_rig import agent_config, running_agent, running_broker, wait_for

PREFIX, CAMERA = "segedge", "cam-01"
SETTINGS = ha.DiscoverySettings(enabled=True, overlay_interval_s=2.0)


def write_ha_config(conf: Path, broker_port: int, http_port: int, ui: bool = False) -> None:
    (conf / ".storage").mkdir(parents=True)
    # for the screenshot only: loopback logs in without a password (one user)
    auth = ("  auth_providers:\n    - type: trusted_networks\n"
            "      trusted_networks: [127.0.0.1/32]\n      allow_bypass_login: true\n"
            "    - type: homeassistant\n" if ui else "")
    ui_parts = "frontend:\nonboarding:\nconfig:\napi:\nsearch:\n" if ui else ""
    (conf / "configuration.yaml").write_text(
        "homeassistant:\n  name: segedge check\n  unit_system: metric\n"
        "  time_zone: UTC\n  latitude: 0\n  longitude: 0\n  elevation: 0\n" + auth +
        f"http:\n  server_host: 127.0.0.1\n  server_port: {http_port}\n"
        "recorder:\n  commit_interval: 1\n" + ui_parts +
        "logger:\n  default: warning\n  logs:\n    homeassistant.components.mqtt: info\n")
    entry = {"entry_id": uuid.uuid4().hex[:26].upper(), "version": 1, "minor_version": 1,
             "domain": "mqtt", "title": "broker",
             "data": {"broker": "127.0.0.1", "port": broker_port, "discovery": True,
                      "discovery_prefix": SETTINGS.discovery_prefix},
             "options": {}, "pref_disable_new_entities": False,
             "pref_disable_polling": False, "source": "user", "unique_id": None,
             "disabled_by": None}
    (conf / ".storage" / "core.config_entries").write_text(json.dumps(
        {"version": 1, "minor_version": 2, "key": "core.config_entries",
         "data": {"entries": [entry]}}))


def http(url: str, data: Optional[dict] = None, token: str = "", form: bool = False) -> Any:
    body = None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if data is not None:
        if form:
            body = urllib.parse.urlencode(data).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            body = json.dumps(data).encode()
            headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=body, headers=headers,
                                 method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=20) as resp:
        text = resp.read().decode()
    return json.loads(text) if text else None


def onboard(base: str) -> str:
    """Finish HA's onboarding through its API (an owner with a random password that is
    never shown); returns an access token for the REST API."""
    client_id = base + "/"
    code = http(base + "/api/onboarding/users", {
        "client_id": client_id, "name": "segedge", "username": "segedge",
        "password": secrets.token_urlsafe(18), "language": "en"})["auth_code"]
    token = http(base + "/auth/token", {"grant_type": "authorization_code", "code": code,
                                        "client_id": client_id}, form=True)["access_token"]
    try:  # marks the step done, then fails on a TTS integration this HA cannot load
        http(base + "/api/onboarding/core_config", {}, token)
    except urllib.error.HTTPError as exc:
        print(f"onboarding core_config: HTTP {exc.code} (step marked done anyway)")
    http(base + "/api/onboarding/analytics", {}, token)
    http(base + "/api/onboarding/integration", {"client_id": client_id,
                                                "redirect_uri": base + "/?auth_callback=1"},
         token)
    return token


def screenshot(hass: str, chromium: str, url: str, out: Path) -> bool:
    """scripts/ha_screenshot.py with HA's own Python (it brings aiohttp)."""
    python = str(Path(hass).parent / "python")
    script = Path(__file__).with_name("ha_screenshot.py")
    proc = subprocess.run([python, str(script), url, str(out), "--chromium", chromium,
                           "--wait", "25", "--height", "1500"], capture_output=True,
                          timeout=180)
    return proc.returncode == 0 and out.exists()


def registry(conf: Path, name: str) -> List[Dict[str, Any]]:
    path = conf / ".storage" / name
    if not path.exists():
        return []
    data = json.loads(path.read_text())["data"]
    return data.get("entities", data.get("devices", []))


def ours(conf: Path) -> List[Dict[str, Any]]:
    return [e for e in registry(conf, "core.entity_registry")
            if e.get("platform") == "mqtt" and str(e.get("unique_id", "")).startswith("segedge_")]


def recorded_states(conf: Path, entity_ids: List[str]) -> Dict[str, List[str]]:
    """entity_id -> the distinct states HA recorded, oldest first."""
    db = conf / "home-assistant_v2.db"
    out: Dict[str, List[str]] = {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        rows = con.execute("SELECT m.entity_id, s.state FROM states s JOIN states_meta m "
                           "ON s.metadata_id = m.metadata_id ORDER BY s.state_id").fetchall()
    for entity_id, state in rows:
        if entity_id in entity_ids and (not out.get(entity_id) or out[entity_id][-1] != state):
            out.setdefault(entity_id, []).append(state)
    return out


class OverlayPublisher:
    """Draws the overlay from the agent's frame + mask messages, publishes a JPEG every
    ``interval`` seconds on the overlay topic (what the agent will do once wired)."""

    def __init__(self, client: mqtt.Client, interval: float) -> None:
        self.client, self.interval = client, interval
        self.frames: Dict[int, np.ndarray] = {}
        self.last = 0.0
        self.sent = 0
        self.lock = threading.Lock()

    def on_message(self, _c, _u, msg) -> None:
        data = json.loads(msg.payload)
        with self.lock:
            if msg.topic.endswith("/frame"):
                raw = np.frombuffer(base64.b64decode(data["image"]), np.uint8)
                self.frames = {data["frame_id"]: cv2.imdecode(raw, cv2.IMREAD_COLOR)}
                return
            frame = self.frames.get(data["frame_id"])
            if frame is None or time.monotonic() - self.last < self.interval:
                return
            mask = encoding.decode(data["mask"], data["encoding"])
            label = overlay.Caption(data["device_id"], data["frame_id"], data["latency_ms"],
                                    overlay.coverage_pairs(data["classes"], data["coverage"]))
            image = overlay.draw(mask, frame, data["classes"], label)
            ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
            if ok:
                self.client.publish(ha.overlay_topic(PREFIX, CAMERA), jpeg.tobytes(), qos=0)
                self.last = time.monotonic()
                self.sent += 1


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hass", required=True, help="path of Home Assistant's hass executable")
    p.add_argument("--keep", type=Path, help="keep HA's config dir here (for a look)")
    p.add_argument("--timeout", type=float, default=240.0)
    p.add_argument("--chromium", help="take a screenshot of the device page with this browser")
    p.add_argument("--screenshot", type=Path, default=Path("docs/img/ha-device.png"))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="segedge-ha-") as tmp:
        work = args.keep or Path(tmp)
        conf = work / "ha"
        with running_broker(work) as broker:
            http_port = free_port()
            write_ha_config(conf, broker.port, http_port, ui=bool(args.chromium))
            log = (work / "hass.log").open("wb")
            hass = subprocess.Popen([args.hass, "-c", str(conf)], stdout=log,
                                    stderr=subprocess.STDOUT)
            t0 = time.monotonic()
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="segedge-ha-check")
            client.connect(broker.host, broker.port)
            client.loop_start()
            try:
                return run(args, conf, broker, client, t0, work, http_port)
            finally:
                client.loop_stop()
                client.disconnect()
                hass.terminate()
                try:
                    hass.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    hass.kill()
                log.close()


def run(args, conf: Path, broker, client: mqtt.Client, t0: float, work: Path,
        http_port: int) -> int:
    manifest = json.loads(Path("demo/models/pets-mobile/2.0.0/manifest.json").read_text())
    camera = ha.CameraInfo(CAMERA, tuple(manifest.get("classes", ("background", "pet"))),
                           manifest.get("name", ""), manifest.get("version", ""), "INT8")
    msgs = ha.discovery(PREFIX, CAMERA, [camera], __version__, SETTINGS)
    for m in msgs:
        client.publish(m.topic, m.payload, qos=1, retain=True)
    for topic, payload in commands.CommandState(max_publish_fps=2.0).state_messages(
            PREFIX, CAMERA).items():
        client.publish(topic, payload, qos=1, retain=True)
    wanted = [m.config()["unique_id"] for m in msgs if not m.is_removal]
    print(f"published {len(msgs)} discovery messages ({len(wanted)} entities, "
          f"{sum(m.is_removal for m in msgs)} removals) retained to {broker.host}:{broker.port}")
    overlay_pub = OverlayPublisher(client, SETTINGS.overlay_interval_s)
    client.on_message = overlay_pub.on_message
    client.subscribe([(f"{PREFIX}/{CAMERA}/frame", 0), (f"{PREFIX}/{CAMERA}/mask", 0)])
    with running_agent(agent_config(broker.port, stats_interval_s=2.0, frame_every=1), work):
        got = wait_for(lambda: len(ours(conf)) >= len(wanted), args.timeout, 2.0)
        print(f"HA registered {len(ours(conf))}/{len(wanted)} entities after "
              f"{time.monotonic() - t0:.0f}s (incl. HA's first start)")
        if not got:
            print((work / "hass.log").read_text(errors="replace")[-4000:])
            return 1
        time.sleep(12)  # a few stats intervals and overlays recorded
        base = f"http://127.0.0.1:{http_port}"
        token = onboard(base) if args.chromium else ""
        if token:
            live = {s["entity_id"]: s for s in http(base + "/api/states", token=token)}
            print("states now (REST API):")
            for e in sorted(ours(conf), key=lambda e: e["entity_id"]):
                st = live.get(e["entity_id"], {})
                unit = st.get("attributes", {}).get("unit_of_measurement") or ""
                print(f"  {e['entity_id']}: {st.get('state')} {unit}".rstrip())
            device = next(d for d in registry(conf, "core.device_registry")
                          if ["mqtt", f"segedge_{CAMERA}"] in d.get("identifiers", []))
            shot = screenshot(args.hass, args.chromium,
                              f"{base}/config/devices/device/{device['id']}", args.screenshot)
            print(f"screenshot {args.screenshot}: {'written' if shot else 'FAILED'}")
    time.sleep(4)  # the agent's clean shutdown reaches HA (offline -> unavailable)
    entities = sorted(ours(conf), key=lambda e: e["entity_id"])
    devices = [d for d in registry(conf, "core.device_registry")
               if ["mqtt", f"segedge_{CAMERA}"] in d.get("identifiers", [])]
    for d in devices:
        print(f"device: {d['name']!r} model {d['model']!r} sw {d['sw_version']!r} "
              f"manufacturer {d['manufacturer']!r}")
    states = recorded_states(conf, [e["entity_id"] for e in entities])
    print(f"overlay JPEGs published: {overlay_pub.sent}")
    print("| entity_id | unique_id | category | states HA recorded (distinct, in order) |")
    print("|---|---|---|---|")
    for e in entities:
        seq = states.get(e["entity_id"], [])
        shown = seq if len(seq) <= 6 else seq[:3] + ["..."] + seq[-2:]
        print(f"| `{e['entity_id']}` | `{e['unique_id']}` | {e.get('entity_category') or ''} "
              f"| {', '.join(shown)} |")
    ok = {e["unique_id"] for e in entities} == set(wanted) and len(devices) == 1
    # discovery off: the same topics, empty and retained -> HA deletes the entities
    for m in ha.removals(msgs):
        client.publish(m.topic, m.payload, qos=1, retain=True)
    gone = wait_for(lambda: not ours(conf), 60, 2.0)
    print(f"after the removals: {len(ours(conf))} segedge entities left "
          f"({'removed' if gone else 'NOT removed'})")
    ok = ok and bool(gone)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
