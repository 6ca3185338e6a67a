"""Run a real Home Assistant against a real Mosquitto and the real (wired) agent on the
demo clip, steer the agent from Home Assistant, and record what HA created.

    python3.11 -m venv /tmp/ha && /tmp/ha/bin/pip install homeassistant==2024.1.6 python-dateutil
    PYTHONPATH=. .venv/bin/python scripts/ha_live_check.py --hass /tmp/ha/bin/hass \
        [--chromium /usr/bin/chromium --screenshot docs/img/ha-device.png]

The agent runs ``examples/home-assistant.toml`` (discovery on, overlay every 2 s) and
publishes discovery, its command states and the overlay stream itself. The script
finishes HA's onboarding over the API (loopback logs in without a password through the
``trusted_networks`` provider, for this throwaway instance only), prints the live
states from the REST API, then calls HA services that command the agent over MQTT
(pause switch, publish-rate number, mask-encoding select, snapshot button, resume) and
checks each lands in the agent (its retained states, its status, a snapshot frame).
It reads HA's entity and device registries and the states HA recorded (recorder
SQLite), then restarts the agent with discovery off and checks HA removed the entities.
The first HA start pip-installs its MQTT requirements (~1 min). With ``--chromium`` it
also takes a screenshot of the device page.
"""

from __future__ import annotations

import argparse
import json
import re
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

import paho.mqtt.client as mqtt

from edge_agent import __version__
from edge_agent.control import homeassistant as ha
from tools.broker import free_port
from tools.integrations_rig import EXAMPLE, agent_config, running_agent, running_broker, wait_for

PREFIX, CAMERA = "segedge", "cam-01"
# the bundle examples/home-assistant.toml runs (that file is the one place naming it)
MODEL = re.search(r'(?m)^bundle = "([^"]+)"', EXAMPLE.read_text()).group(1)
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


class Watcher:
    """What the agent publishes on its own topics, newest per topic."""

    def __init__(self) -> None:
        self.last: Dict[str, bytes] = {}
        self.count: Dict[str, int] = {}
        self.lock = threading.Lock()

    def on_message(self, _c, _u, msg) -> None:
        with self.lock:
            self.last[msg.topic] = bytes(msg.payload)
            self.count[msg.topic] = self.count.get(msg.topic, 0) + 1

    def get(self, feature: str) -> bytes:
        with self.lock:
            return self.last.get(f"{PREFIX}/{CAMERA}/{feature}", b"")

    def n(self, feature: str) -> int:
        with self.lock:
            return self.count.get(f"{PREFIX}/{CAMERA}/{feature}", 0)


def service(base: str, token: str, domain: str, name: str, data: Dict[str, Any]) -> None:
    http(f"{base}/api/services/{domain}/{name}", data, token)


def ha_state(base: str, token: str, entity_id: str) -> str:
    return http(f"{base}/api/states/{entity_id}", token=token).get("state", "")


def steer(base: str, token: str, watch: Watcher) -> bool:
    """Command the agent through HA services; True when every command landed."""
    cam = CAMERA.replace("-", "_")
    status = lambda: json.loads(watch.get("status") or b"{}")  # noqa: E731
    frames0 = watch.n("frame")
    steps = [
        ("switch.turn_on paused", ("switch", "turn_on", {"entity_id": f"switch.{cam}_paused"}),
         lambda: watch.get("paused/state") == b"ON" and status().get("reason") ==
         "paused by command" and ha_state(base, token, f"switch.{cam}_paused") == "on"
         and ha_state(base, token, f"sensor.{cam}_state") == "degraded"),
        ("button.press snapshot (while paused)",
         ("button", "press", {"entity_id": f"button.{cam}_snapshot"}),
         lambda: watch.n("frame") > frames0),
        ("switch.turn_off paused", ("switch", "turn_off", {"entity_id": f"switch.{cam}_paused"}),
         lambda: watch.get("paused/state") == b"OFF" and status().get("state") == "online"
         and ha_state(base, token, f"sensor.{cam}_state") == "online"),
        ("number.set_value publish rate 1", ("number", "set_value", {
            "entity_id": f"number.{cam}_max_publish_fps", "value": 1}),
         lambda: watch.get("max_publish_fps/state") == b"1.0"
         and ha_state(base, token, f"number.{cam}_max_publish_fps") == "1.0"),
        ("select.select_option mask encoding rle", ("select", "select_option", {
            "entity_id": f"select.{cam}_mask_encoding", "option": "rle"}),
         lambda: watch.get("mask_encoding/state") == b"rle"
         and json.loads(watch.get("mask") or b"{}").get("encoding") == "rle"),
        ("button.press reload (status republished, same connection)",
         ("button", "press", {"entity_id": f"button.{cam}_reload"}),
         lambda: watch.n("status") > statuses[0] and status().get("state") == "online"
         and status().get("connection") == connection),
    ]
    ok = True
    connection = status().get("connection")
    statuses = [0]
    for label, (domain, name, data), landed in steps:
        t = time.monotonic()
        statuses[0] = watch.n("status")
        service(base, token, domain, name, data)
        got = wait_for(landed, 20, 0.2)
        print(f"  {label}: {'landed' if got else 'NOT landed'} "
              f"({time.monotonic() - t:.1f}s)")
        ok = ok and bool(got)
    return ok


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
            write_ha_config(conf, broker.port, http_port, ui=True)
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
    manifest = json.loads(Path(MODEL, "manifest.json").read_text())
    camera = ha.CameraInfo(CAMERA, tuple(manifest.get("classes", ("background", "pet"))),
                           manifest.get("name", ""), manifest.get("version", ""), "INT8")
    wanted = [m.config()["unique_id"] for m in ha.discovery(PREFIX, CAMERA, [camera],
                                                            __version__, SETTINGS)
              if not m.is_removal]
    watch = Watcher()
    client.on_message = watch.on_message
    client.subscribe([(f"{PREFIX}/{CAMERA}/#", 0)])
    config = agent_config(broker.port, stats_interval_s=2.0)
    ok = True
    with running_agent(config, work):
        got = wait_for(lambda: len(ours(conf)) >= len(wanted), args.timeout, 2.0)
        print(f"the agent published its discovery; HA registered {len(ours(conf))}/"
              f"{len(wanted)} entities after {time.monotonic() - t0:.0f}s (incl. HA's first "
              "start)")
        if not got:
            print((work / "hass.log").read_text(errors="replace")[-4000:])
            return 1
        time.sleep(8)  # a few stats intervals and overlays recorded
        base = f"http://127.0.0.1:{http_port}"
        token = onboard(base)
        live = {s["entity_id"]: s for s in http(base + "/api/states", token=token)}
        print("states now (REST API):")
        for e in sorted(ours(conf), key=lambda e: e["entity_id"]):
            st = live.get(e["entity_id"], {})
            unit = st.get("attributes", {}).get("unit_of_measurement") or ""
            print(f"  {e['entity_id']}: {st.get('state')} {unit}".rstrip())
        print("commands from Home Assistant:")
        ok = steer(base, token, watch)
        if args.chromium:
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
    print(f"overlay JPEGs the agent published: {watch.n('overlay')}")
    print("| entity_id | unique_id | category | states HA recorded (distinct, in order) |")
    print("|---|---|---|---|")
    for e in entities:
        seq = states.get(e["entity_id"], [])
        shown = seq if len(seq) <= 6 else seq[:3] + ["..."] + seq[-2:]
        print(f"| `{e['entity_id']}` | `{e['unique_id']}` | {e.get('entity_category') or ''} "
              f"| {', '.join(shown)} |")
    ok = ok and {e["unique_id"] for e in entities} == set(wanted) and len(devices) == 1
    # discovery off: the agent publishes the same topics empty -> HA deletes the entities
    off = re.sub(r"(?m)^enabled = true(\s+# publish discovery)", r"enabled = false\1", config)
    assert off != config
    with running_agent(off, work):
        gone = wait_for(lambda: not ours(conf), 60, 2.0)
    print(f"agent restarted with discovery off: {len(ours(conf))} segedge entities left "
          f"({'removed' if gone else 'NOT removed'})")
    ok = ok and bool(gone)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
