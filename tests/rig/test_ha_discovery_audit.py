"""scripts/audit_ha_discovery.py: discovery that points outside its device is flagged.

Issue 17, finding 8: the broker's ACL lets a device write discovery only under its own
node ids, but not what the payload says; a device can name another device's command topic
and identifiers under its own node. The audit reads the role's rendered ACL (who owns which
node and ids) and the retained configs, here from a Mosquitto running the role's files.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.control import homeassistant as ha
from tests.conftest import require
from tests.rig.broker_config import LocalBroker, free_port
from tests.rig.mqtt_probe import Identity, Probe

REPO = Path(__file__).resolve().parents[2]
AUDIT = REPO / "scripts/audit_ha_discovery.py"
DEVICES = ["cam-a", "cam-b"]
CAMERAS = {"cam-a": ["a-front", "a-yard"], "cam-b": ["b-door"]}
SENDERS = {"cam-a": ["svc-1"]}
PASSWORDS = {"cam-a": "pw-a-123456", "cam-b": "pw-b-654321", "dash": "pw-dash",
             "svc-1": "pw-svc-1"}
# finding 8 as reported: under cam-a's own camera node, b-door's command and identity
FORGED = ("homeassistant/switch/segedge_a-front/a-front_paused/config", {
    "name": "Paused", "unique_id": "segedge_a-front_paused",
    "command_topic": "segedge/b-door/paused/set", "state_topic": "segedge/b-door/paused/state",
    "device": {"identifiers": ["segedge_b-door"], "name": "b-door"}})
# the same with Home Assistant's abbreviations and the ~ base topic
ABBREVIATED = ("homeassistant/button/segedge_cam-a/cam-a_reload/config", {
    "name": "Reload", "uniq_id": "segedge_cam-a_reload", "~": "segedge/cam-b",
    "cmd_t": "~/reload/set", "avty": [{"t": "segedge/cam-a/status"}],
    "dev": {"ids": "segedge_agent_cam-a", "cns": [["mac", "02:00:00:00:00:01"]]}})


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    require(shutil.which("mosquitto") is not None, "mosquitto (apt-get install mosquitto)")
    b = LocalBroker(tmp_path_factory.mktemp("broker-audit"), free_port(), "password", DEVICES,
                    ["dash"], [], dict(PASSWORDS), cameras=CAMERAS, senders=SENDERS).start()
    yield b
    b.stop()


def _acl(broker: LocalBroker) -> str:
    return (broker.workdir / "etc/acl").read_text()


def _agent_configs(agent_id: str, cameras) -> dict:
    """What the real agent publishes (edge_agent.control.homeassistant), discovery on."""
    infos = [ha.CameraInfo(c, model_name="pets", model_version="1.0.0", precision="INT8")
             for c in cameras]
    msgs = ha.discovery("segedge", agent_id, infos, "0.1.0",
                        ha.DiscoverySettings(enabled=True, overlay_interval_s=2.0))
    return {m.topic: m.payload for m in msgs}


def _audit():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import audit_ha_discovery
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return audit_ha_discovery


def test_the_agents_own_discovery_passes_and_forgeries_are_flagged(broker):
    audit = _audit()
    good = {**_agent_configs("cam-a", CAMERAS["cam-a"]), **_agent_configs("cam-b", ["cam-b"])}
    assert len(good) > 10 and audit.audit(good, _acl(broker)) == []
    found = audit.audit(dict(good, **{t: json.dumps(p) for t, p in (FORGED, ABBREVIATED)}),
                        _acl(broker))
    whats = sorted((f.topic.split("/")[2], f.owner, f.what.split(" ")[0]) for f in found)
    assert whats == [("segedge_a-front", "cam-a", "command_topic"),
                     ("segedge_a-front", "cam-a", "device"),
                     ("segedge_a-front", "cam-a", "state_topic"),
                     ("segedge_cam-a", "cam-a", "cmd_t"),
                     ("segedge_cam-a", "cam-a", "device")], [f.line() for f in found]
    assert any('"segedge/cam-b/reload/set"' in f.what for f in found)  # ~ expanded
    assert any("connections" in f.what for f in found)
    # a node nobody in the ACL owns (an old fleet, an admin), and a removal (empty)
    stray = {"homeassistant/sensor/segedge_gone/x/config": json.dumps({"state_topic": "a/b"}),
             FORGED[0]: ""}
    assert [f.owner for f in audit.audit(stray, _acl(broker))] == [""]


def test_audit_reads_the_brokers_retained_configs_and_exits_1(broker, tmp_path):
    cam = Probe(Identity("127.0.0.1", broker.port, **broker.identity_files("cam-a"),
                         client_id="cam-a"))
    assert cam.connect() == 0
    for topic, payload in _agent_configs("cam-a", CAMERAS["cam-a"]).items():
        assert cam.publish(topic, payload.encode(), retain=True) < 128
    password = tmp_path / "dash.pw"
    password.write_text(PASSWORDS["dash"])
    command = [sys.executable, str(AUDIT), "--acl", str(broker.workdir / "etc/acl"),
               "--port", str(broker.port), "--ca", str(broker.pki / "ca.crt"),
               "--user", "dash", "--password-file", str(password), "--seconds", "1"]
    clean = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    read = int(clean.stdout.rsplit("\n", 2)[-2].split()[0])
    assert read == len(_agent_configs("cam-a", CAMERAS["cam-a"])) > 10, clean.stdout
    # the ACL lets cam-a write this (its own node): only the audit can see what it says
    assert cam.publish(FORGED[0], json.dumps(FORGED[1]).encode(), retain=True) < 128
    flagged = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert flagged.returncode == 1, flagged.stdout + flagged.stderr
    assert f"FLAGGED {FORGED[0]} (written by cam-a): command_topic " \
           '"segedge/b-door/paused/set"' in flagged.stdout, flagged.stdout
    assert f"mosquitto_pub -r -n -t '{FORGED[0]}'" in flagged.stdout
    assert cam.publish(FORGED[0], b"", retain=True) < 128  # removed: clean again
    assert subprocess.run(command, capture_output=True, text=True,
                          timeout=60).returncode == 0
    cam.close()
