"""The fleet's broker, provisioned by deploy/site.yml on a booted host, under attack.

Runs after test_fleet.py on the same fleet: agents connect over TLS with their own
identities; every refusal is tried from the controller namespace with a real client
(tests/rig/mqtt_probe.py) against the real broker; then one device's password is rotated,
a release pointed at a wrong broker is rolled back, and the broker and one device switch
to client certificates (mutual TLS), where a wrong or expired certificate is refused.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from pathlib import Path

import pytest

from tests.rig.rig import wait_for

pytestmark = [pytest.mark.rig, pytest.mark.timeout(900)]
NOT_AUTHORISED = 135
REPO = Path(__file__).resolve().parents[2]
PKI = REPO / "deploy/roles/segedge_broker/files/segedge-pki"
AGENTS = ("dev-cpu", "dev-gpu", "dev-npu", "dev-myriad")
# An identity change touches only these parts of the two plays (docs/security.md).
IDENTITY_TAGS = ("segedge_broker_pki,segedge_broker_config,segedge_broker_service,"
                 "segedge_config,segedge_service,segedge_health")


def _broker_log(fleet) -> str:
    return fleet.broker.run("journalctl -u mosquitto.service --no-pager -o cat").stdout


def _connections(fleet, ident: str) -> int:
    return len(re.findall(rf"New client connected from \S+ as {re.escape(ident)} \(",
                          _broker_log(fleet)))


def test_agents_connect_over_tls_with_their_own_identity(fleet):
    log = _broker_log(fleet)
    conf = fleet.broker.run("cat /etc/mosquitto/mosquitto.conf").stdout
    assert "listener 8883" in conf and "allow_anonymous false" in conf, conf
    assert "\nlistener 1883" not in conf, "a plaintext listener on the network"
    for name in AGENTS:
        assert re.search(rf"New client connected from \S+ as {name} \(p5, \S+, \S+, "
                         rf"u'{name}'\)", log), f"{name} not connected as itself:\n{log[-3000:]}"
        dev = fleet.devices[name]
        # the secret is in a root-only file handed over by LoadCredential=, nowhere else
        secret = fleet.password(name)
        found = dev.run(f"grep -rl -F '{secret}' /etc /opt/segedge/models 2>/dev/null").stdout
        assert found.split() == ["/etc/segedge/mqtt_password"], found
        mode = dev.run("stat -c '%U %a' /etc/segedge/mqtt_password").stdout.strip()
        assert mode == "root 600", mode
        toml = dev.run("cat /etc/segedge/agent.toml").stdout
        assert 'port = 8883' in toml and 'tls_ca = "/etc/segedge/mqtt_ca.crt"' in toml, toml
        assert f'username = "{name}"' in toml
    masks = fleet.mqtt("segedge/dev-cpu/mask", count=2, timeout=30)
    assert len(masks) == 2, fleet.devices["dev-cpu"].journal()


def test_a_device_cannot_publish_under_another_devices_id(fleet):
    before = fleet.status("dev-cpu")
    out = fleet.probe("dev-gpu", "publish", "segedge/dev-cpu/status", "--retain")
    assert out["connack"] == 0 and out["puback"] == NOT_AUTHORISED, out
    after = fleet.status("dev-cpu")
    assert after["state"] == before["state"] == "online", (before, after)
    assert "probe" not in json.dumps(after)


def test_a_device_cannot_take_over_another_devices_client_id(fleet):
    dev = fleet.devices["dev-cpu"]
    pid = dev.unit("MainPID")["MainPID"]
    before = _connections(fleet, "dev-cpu")
    for stolen in ("segedge-dev-cpu", "dev-cpu"):
        out = fleet.probe("dev-gpu", "--client-id", stolen, "publish", "segedge/dev-cpu/status")
        # the connection is bound to its own identity (dev-gpu): same ACL, no takeover
        assert out["connack"] == 0 and out["puback"] == NOT_AUTHORISED, out
    # (the probe's own identity, dev-gpu, is what gets taken over: its agent reconnects)
    assert "Client dev-cpu already connected" not in _broker_log(fleet)
    assert _connections(fleet, "dev-cpu") == before, "dev-cpu was disconnected and reconnected"
    assert dev.unit("MainPID")["MainPID"] == pid
    assert fleet.status("dev-cpu")["state"] == "online"


def test_an_anonymous_client_is_refused(fleet):
    out = fleet.probe("", "connect")
    assert out["connack"] == NOT_AUTHORISED, out
    wrong = fleet.rig.rundir.parent / "wrong.password"
    wrong.write_text("not-the-password\n")
    out = fleet.probe("", "--user", "dev-gpu", "--password-file", str(wrong), "connect")
    assert out["connack"] in (134, NOT_AUTHORISED), out


def test_a_subscriber_cannot_publish_a_retained_status(fleet):
    # (dev-cpu: the probes that act as dev-gpu take dev-gpu's own session over, and its
    # agent's last will says offline until it reconnects)
    out = fleet.probe("watcher", "publish", "segedge/dev-cpu/status", "--retain")
    assert out["connack"] == 0 and out["puback"] == NOT_AUTHORISED, out
    status = fleet.status("dev-cpu")
    assert status["state"] == "online" and "probe" not in json.dumps(status), status
    out = fleet.probe("watcher", "publish", "segedge/dev-gpu/paused/set")
    assert out["puback"] == NOT_AUTHORISED, out
    out = fleet.probe("operator", "publish", "segedge/dev-gpu/snapshot/set")
    assert out["connack"] == 0 and out["puback"] < 128, out


def test_a_device_cannot_read_another_devices_masks(fleet):
    spy = fleet.probe("dev-gpu", "--seconds", "3", "subscribe", "segedge/dev-cpu/mask")
    assert spy["connack"] == 0 and spy["received"] == [], spy
    control = fleet.probe("watcher", "--seconds", "3", "subscribe", "segedge/dev-cpu/mask")
    assert control["received"], f"dev-cpu published no mask meanwhile: {control}"


def test_rotating_one_devices_password_changes_only_it(fleet):
    old = fleet.password("dev-npu")
    (fleet.pki / "passwords/dev-npu").unlink()  # rotation: the next run generates a new one
    pids = {n: fleet.devices[n].unit("MainPID")["MainPID"] for n in AGENTS}
    broker_pid = fleet.broker.unit("MainPID", unit="mosquitto.service")["MainPID"]
    before = _connections(fleet, "dev-npu")
    rc, out, rec = fleet.playbook("--limit", "broker,dev-npu", "--tags", IDENTITY_TAGS)
    assert rc == 0, out[-6000:]
    assert rec["broker"]["changed"] >= 1 and rec["dev-npu"]["changed"] >= 1, rec
    new = fleet.password("dev-npu")
    assert new != old
    # the broker reloaded (kept running, others connected), dev-npu restarted and reconnected
    assert fleet.broker.unit("MainPID", unit="mosquitto.service")["MainPID"] == broker_pid
    for name in AGENTS:
        now = fleet.devices[name].unit("MainPID")["MainPID"]
        assert (now != pids[name]) == (name == "dev-npu"), (name, pids[name], now)
    wait_for(lambda: _connections(fleet, "dev-npu") > before, 60, 1, "dev-npu to reconnect")
    stale = fleet.rig.rundir.parent / "old.password"
    stale.write_text(old + "\n")
    out = fleet.probe("", "--user", "dev-npu", "--password-file", str(stale), "connect")
    assert out["connack"] in (134, NOT_AUTHORISED), out


def test_a_release_pointed_at_a_wrong_broker_is_rolled_back(fleet):
    """The gate needs mqtt.connected and a published mask from the new process."""
    dev = fleet.devices["dev-cpu"]
    current = dev.run("readlink /opt/segedge/models/current").stdout.strip()
    rc, out, rec = fleet.playbook(
        "--limit", "dev-cpu", "-e", f"segedge_agent_bundle_dir={fleet.bundles['wrong_broker']}",
        "-e", "segedge_agent_mqtt_port=18883", "-e", "segedge_agent_health_timeout_s=20")
    assert rc != 0 and rec["dev-cpu"]["failed"] == 1, out[-4000:]
    assert "release tiny-0.0.5 failed its health check" in out, out[-4000:]
    reason = out.split("failed its health check", 1)[1].split(" -- ", 1)[0]
    assert "127.77.0.14:18883" in reason, reason  # the gate names the broker it cannot reach
    assert "configuration restored" in out and "(healthy again)" in out, out[-4000:]
    assert dev.run("readlink /opt/segedge/models/current").stdout.strip() == current
    assert "port = 8883" in dev.run("cat /etc/segedge/agent.toml").stdout
    assert dev.run("ls /etc/segedge | grep -c '~$' || true").stdout.strip() == "0"
    wait_for(lambda: fleet.status("dev-cpu")["state"] == "online", 30, 1, "online again")


def test_client_certificates_mutual_tls(fleet):
    """Switch the broker and dev-cpu to client certificates; wrong, expired or revoked ones
    fail; rotating dev-cpu's certificate changes only it and the broker."""
    dev = fleet.devices["dev-cpu"]
    # an identity-only run: the inventory must name the release the device runs (the gate
    # checks it), here the demo model of test_fleet's upgrade or one of the session's tiny
    # bundles (the first one, or test_fleet_canary's last)
    running = dev.run("readlink /opt/segedge/models/current").stdout.strip()
    name, _, version = running.rsplit("/", 1)[-1].rpartition("-")
    bundle = (REPO / "demo/models" / name / version if name != "tiny"
              else next(b for b in fleet.bundles.values() if b.name == version))
    mode = ("-e", "segedge_broker_auth=certificate", "-e", f"segedge_agent_bundle_dir={bundle}")
    rc, out, rec = fleet.playbook("--limit", "broker,dev-cpu", "--tags", IDENTITY_TAGS, *mode)
    assert rc == 0, out[-6000:]
    fleet.auth = "certificate"
    files = dev.run("ls /etc/segedge").stdout.split()
    assert "mqtt_tls_key" in files and "mqtt_password" not in files, files
    dropin = dev.run("cat /etc/systemd/system/segedge-agent.service.d/10-segedge.conf").stdout
    assert "LoadCredential=mqtt_tls_key:/etc/segedge/mqtt_tls_key" in dropin, dropin
    key = (fleet.pki / "clients/dev-cpu.key").read_text().strip().splitlines()[1]
    assert not dev.run(f"grep -rl -F '{key}' /etc/segedge/agent.toml /etc/segedge/agent.env "
                       "/etc/systemd").stdout.strip()
    wait_for(lambda: re.search(r"as dev-cpu \(p5, \S+, \S+, u'dev-cpu'\)",
                               _broker_log(fleet).split("mosquitto version")[-1]),
             60, 1, "dev-cpu to connect with its certificate")
    assert len(fleet.mqtt("segedge/dev-cpu/mask", count=2, timeout=30)) == 2, dev.journal()
    out = fleet.probe("dev-gpu", "publish", "segedge/dev-cpu/status", "--retain")
    assert out["connack"] == 0 and out["puback"] == NOT_AUTHORISED, out
    out = fleet.probe("", "connect")
    assert out["connack"] is None, out  # no client certificate: no TLS session
    _wrong_and_expired(fleet)
    # rotation: revoke dev-cpu's certificate on the controller, run again for it and the broker
    saved = fleet.rig.rundir.parent / "badcerts"
    for ext in ("crt", "key"):
        (saved / f"dev-cpu-old.{ext}").write_bytes((fleet.pki / f"clients/dev-cpu.{ext}")
                                                    .read_bytes())
    revoke = fleet.rig.ns_exec([sys.executable, str(PKI), "--dir", str(fleet.pki), "--revoke",
                                "dev-cpu"], check=False)
    assert json.loads(revoke.stdout) == {"revoked": True}, revoke.stdout + revoke.stderr
    before = _connections(fleet, "dev-cpu")
    rc, out, rec = fleet.playbook("--limit", "broker,dev-cpu", "--tags", IDENTITY_TAGS, *mode)
    assert rc == 0 and rec["broker"]["changed"] and rec["dev-cpu"]["changed"], out[-6000:]
    wait_for(lambda: _connections(fleet, "dev-cpu") > before, 60, 1, "dev-cpu to reconnect")
    old = fleet.probe("", "--cert", str(saved / "dev-cpu-old.crt"), "--key",
                      str(saved / "dev-cpu-old.key"), "connect")
    assert old["connack"] is None, old  # revoked: on the CRL the broker now loads
    assert len(fleet.mqtt("segedge/dev-cpu/mask", count=2, timeout=30)) == 2, dev.journal()
    # a second run in this mode changes nothing
    rc, out, rec = fleet.playbook("--limit", "broker,dev-cpu", "--tags", IDENTITY_TAGS, *mode)
    assert rc == 0 and all(r["changed"] == 0 for r in rec.values()), out[-6000:]


def _wrong_and_expired(fleet):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.rig.broker_config import pki_module

    pki = pki_module()
    tmp = fleet.rig.rundir.parent / "badcerts"
    tmp.mkdir(exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca = x509.load_pem_x509_certificate((fleet.pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((fleet.pki / "ca.key").read_bytes(), None)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = pki.make_cert("segedge CA", other_key, None, [], False, now, now + dt.timedelta(1))
    cases = {"wrong-ca": ((other, other_key), now, now + dt.timedelta(days=1)),
             "expired": ((ca, ca_key), now - dt.timedelta(days=30), now - dt.timedelta(days=1))}
    for label, (issuer, start, end) in cases.items():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = pki.make_cert("dev-gpu", key, issuer, [], False, start, end)
        (tmp / f"{label}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (tmp / f"{label}.key").write_bytes(pki._key_pem(key))
        out = fleet.probe("", "--cert", str(tmp / f"{label}.crt"), "--key",
                          str(tmp / f"{label}.key"), "connect")
        assert out["connack"] is None, (label, out)
    log = _broker_log(fleet)
    assert "certificate verify failed" in log or "certificate has expired" in log, log[-2000:]


def test_broker_unit_and_files_are_private(fleet):
    b = fleet.broker
    modes = b.run("stat -c '%n %U %G %a' /etc/mosquitto/segedge/server.key "
                  "/etc/mosquitto/segedge/acl /etc/mosquitto/segedge").stdout.split("\n")
    assert all(line.split()[-1] in ("640", "750") for line in modes if line), modes
    assert b.unit("ActiveState", unit="mosquitto.service")["ActiveState"] == "active"
    assert (fleet.pki.stat().st_mode & 0o077) == 0 and (fleet.pki / "ca.key").stat().st_mode \
        & 0o077 == 0
