"""Sites, bridged, on booted Debian hosts: deploy/site.yml provisions a central broker and
two site brokers (systemd-nspawn, one network namespace each); the story runs from the
rig's controller namespace (tests/rig/sites_story.py).

Devices are MQTT 5 clients with their kit certificates (the agent's wire behaviour, as in
test_sites_local.py); the inventory lists them with their segedge_site, the broker play
(--limit segedge_broker) never contacts them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import require
from tests.rig.rig import Rig, recap, sh

REPO = Path(__file__).resolve().parents[2]
RIG_DIR = REPO / ".rig"
VENV_BIN = Path(sys.executable).parent

pytestmark = [pytest.mark.rig, pytest.mark.timeout(900)]
BROKERS = {"central": "", "broker-a": "site-a", "broker-b": "site-b"}
DEVICES = {"dev-a1": "site-a", "dev-b1": "site-b"}
OUTAGE_S = float(os.environ.get("SEGEDGE_SITE_OUTAGE_S", "20"))


def log(msg: str) -> None:
    sys.stderr.write(f"[rig {time.strftime('%H:%M:%S')}] {msg}\n")


class SitesRig:
    def __init__(self, rig: Rig, inventory, pki):
        self.rig, self.inventory, self.pki, self.runs = rig, inventory, pki, 0

    def playbook(self, *args: str):
        self.runs += 1
        env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "deploy/ansible.cfg"),
                   ANSIBLE_NOCOLOR="1", ANSIBLE_HOST_KEY_CHECKING="False",
                   ANSIBLE_SSH_ARGS="-o ControlMaster=auto -o ControlPersist=30s",
                   ANSIBLE_SSH_CONTROL_PATH_DIR=str(self.rig.rundir / "cp"),
                   ANSIBLE_LOCAL_TEMP=str(self.rig.rundir / "ansible-tmp"))
        argv = [str(VENV_BIN / "ansible-playbook"), "-i", str(self.inventory),
                str(REPO / "deploy/site.yml"), "--limit", "segedge_broker", *args]
        t0 = time.monotonic()
        proc = self.rig.ns_exec(argv, check=False, timeout=600, env=env, cwd=REPO)
        out = proc.stdout + proc.stderr
        (self.rig.rundir.parent / f"ansible-{self.runs:02d}.log").write_text(out)
        log(f"sites: ansible-playbook -> rc {proc.returncode} in {time.monotonic() - t0:.1f}s")
        return proc.returncode, out, recap(out)


@pytest.fixture(scope="module")
def sites_rig():
    for tool in ("mmdebstrap", "systemd-nspawn", "ip", "ssh", "ssh-keygen", "nsenter"):
        require(shutil.which(tool) is not None, f"{tool} (scripts/setup.sh all)")
    require(os.geteuid() == 0, "root (network namespaces, systemd-nspawn)")
    from tests.rig.roots import ensure_root

    root = ensure_root("bookworm", log)
    session = uuid.uuid4().hex[:5]
    rundir = RIG_DIR / "run" / f"sites-{session}"
    rig = Rig(name=f"ss{session}", rundir=rundir / "devices")
    rig.rundir.mkdir(parents=True)
    try:
        key = rundir / "id_ed25519"
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "segedge-rig", "-f", str(key)])
        rig.setup_controller()
        pub = (rundir / "id_ed25519.pub").read_text()
        for name in BROKERS:
            rig.add_device(name, "bookworm", root, pub)
        for dev in rig.devices.values():
            rig.boot(dev)
        for dev in rig.devices.values():
            rig.wait_booted(dev)
        pki = rundir / "pki"
        inventory = rundir / "hosts.yml"
        inventory.write_text(json.dumps({"all": {"vars": {
            "ansible_user": "root", "ansible_ssh_private_key_file": str(key),
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no "
                                       "-o UserKnownHostsFile=/dev/null",
            "ansible_python_interpreter": "/usr/bin/python3",
            "segedge_broker_auth": "certificate", "segedge_broker_pki_dir": str(pki),
            "segedge_broker_subscribers": ["dash"], "segedge_broker_operators": ["op"],
            "segedge_broker_bridge_keepalive": 5, "segedge_broker_bridge_restart_timeout": 2,
        }, "children": {
            "segedge_broker": {"hosts": {
                name: {"ansible_host": rig.devices[name].ip,
                       **({"segedge_broker_site": site} if site else {})}
                for name, site in BROKERS.items()}},
            "segedge": {"hosts": {d: {"segedge_site": s} for d, s in DEVICES.items()}}}}}))
        yield SitesRig(rig, inventory, pki)
    finally:
        cp = rig.rundir / "cp"
        if cp.exists():
            for sock in cp.iterdir():
                subprocess.run(["ssh", "-O", "exit", "-o", f"ControlPath={sock}", "x"],
                               capture_output=True, timeout=10)
        rig.close(log)


def test_site_brokers_bridge_to_the_centre_idempotently(sites_rig):
    rc, out, rec = sites_rig.playbook()
    assert rc == 0, out[-5000:]
    rc, out, rec = sites_rig.playbook()
    assert rc == 0, out[-5000:]
    assert {h: r["changed"] for h, r in rec.items()} == {h: 0 for h in BROKERS}, out[-5000:]
    a = sites_rig.rig.devices["broker-a"]
    modes = a.run("stat -c '%n %a %U:%G' /etc/mosquitto/segedge/bridge.key "
                  "/etc/mosquitto/segedge/bridge.crt /etc/mosquitto/mosquitto.conf").stdout
    assert "/etc/mosquitto/segedge/bridge.key 640 root:mosquitto" in modes, modes
    assert "/etc/mosquitto/mosquitto.conf 644 root:root" in modes, modes
    conf = a.run("cat /etc/mosquitto/mosquitto.conf").stdout
    assert "connection segedge-bridge-site-a" in conf and "dev-b1" not in conf, conf
    central = sites_rig.rig.devices["central"]
    assert "connection " not in central.run("cat /etc/mosquitto/mosquitto.conf").stdout
    acl = central.run("cat /etc/mosquitto/segedge/acl").stdout
    assert "user bridge-site-a" in acl and "user dev-a1" not in acl, acl
    log_a = a.run("journalctl -u mosquitto --no-pager -n 50").stdout
    assert "bridge-site-a" in central.run("journalctl -u mosquitto --no-pager").stdout, log_a


def test_the_sites_story_on_booted_brokers(sites_rig):
    devs = sites_rig.rig.devices
    argv = [sys.executable, "-m", "tests.rig.sites_story", "--pki", str(sites_rig.pki),
            "--central", devs["central"].ip, "--site-a", devs["broker-a"].ip,
            "--site-b", devs["broker-b"].ip, "--netns-a", devs["broker-a"].netns,
            "--outage", str(OUTAGE_S)]
    proc = sites_rig.rig.ns_exec(argv, check=False, timeout=OUTAGE_S + 240, cwd=REPO,
                                 env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    story = json.loads(proc.stdout.strip().splitlines()[-1])
    log("sites story: " + json.dumps(story))
    (sites_rig.rig.rundir.parent / "story.json").write_text(json.dumps(story, indent=1))
    assert len(story["arrived_at_centre"]) == 6, story
    assert [r["topic"] for r in story["reply"]] == ["segedge/dev-a1/reply/op-1"], story
    assert story["reply"][0]["correlation"] == "0102"
    assert story["commands_a"] == ["segedge/dev-a1/restart/set"] and story["commands_b"] == []
    assert story["cross_publish"] == {"site-a": 135, "site-b": 135, "central": 135}, story
    assert story["cross_read"] == {"site-a": [], "site-b": [], "central": []}, story
    assert story["stats_delivered"] == story["stats_sent"], story
