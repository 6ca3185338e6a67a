"""Static checks of the deploy role and the unit (no devices, no root): fast, always run."""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import require

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "deploy/roles/segedge_agent"
ROLES = [ROLE, REPO / "deploy/roles/segedge_broker"]
UNIT = REPO / "systemd/segedge-agent.service"


def test_ansible_lint_production_profile():
    lint = Path(sys.executable).parent / "ansible-lint"
    require(lint.exists(), "ansible-lint (the deploy extra)")
    proc = subprocess.run([str(lint), "--profile", "production", "--offline", "-q",
                           "site.yml", "roles/segedge_agent", "roles/segedge_broker"],
                          cwd=REPO / "deploy", capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, NO_COLOR="1", ANSIBLE_CONFIG="ansible.cfg"))
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_every_default_is_specified_and_documented(role):
    ROLE = role
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    specs = yaml.safe_load((ROLE / "meta/argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    assert set(defaults) - set(options) == set(), "defaults without an argument spec"
    assert set(options) - set(defaults) == set(), "argument specs without a default"
    text = (ROLE / "defaults/main.yml").read_text()
    for name, spec in options.items():
        assert spec.get("description"), f"{name}: no description in argument_specs"
        # a comment line somewhere above the variable in defaults/main.yml
        block = text.split(f"\n{name}:")[0].rstrip().splitlines()
        assert any(line.startswith("#") for line in block[-6:]), f"{name}: undocumented default"


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_templates_carry_ansible_managed(role):
    ROLE = role
    for tpl in (ROLE / "templates").glob("*.j2"):
        assert tpl.read_text().startswith("{{ ansible_managed | comment }}"), tpl.name


def test_playbook_rolls_out_in_batches():
    broker, agents = yaml.safe_load((REPO / "deploy/site.yml").read_text())
    assert broker["roles"] == [{"role": "segedge_broker"}], "the broker (and its CA) first"
    assert "serial" in agents and "max_fail_percentage" in agents


def test_unit_has_the_required_settings():
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    text = re.sub(r"^(DeviceAllow|SystemCallFilter)=", lambda m: f"{m.group(1)}_{id(m)}=",
                  UNIT.read_text(), flags=re.M)
    parser.read_string(text)
    svc = parser["Service"]
    expected = {
        "Type": "notify", "Restart": "on-failure", "RestartPreventExitStatus": "78",
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "DevicePolicy": "closed", "StateDirectory": "segedge",
        "CacheDirectory": "segedge", "User": "segedge",
    }
    for key, value in expected.items():
        assert svc.get(key) == value, f"{key}={svc.get(key)!r}, expected {value}"
    assert "WatchdogSec" in svc and "EnvironmentFile" in svc and "RestrictAddressFamilies" in svc
    assert "MemoryDenyWriteExecute" not in svc, "breaks OpenVINO's JIT (oneDNN/Xbyak)"
    raw = UNIT.read_text()
    assert "SystemCallFilter=@system-service" in raw
    allows = re.findall(r"^DeviceAllow=(.+)$", raw, flags=re.M)
    assert sorted(a.split()[0] for a in allows) == ["char-accel", "char-drm", "char-video4linux"]
    assert parser["Unit"].get("StartLimitBurst") and parser["Unit"].get("StartLimitIntervalSec")


def test_preflight_refuses_bundle_paths_that_leave_the_release(tmp_path):
    """The role copies files as root to paths from the manifest: check them on the controller."""
    playbook_bin = Path(sys.executable).parent / "ansible-playbook"
    require(playbook_bin.exists(), "ansible-playbook (the deploy extra)")
    tasks = yaml.safe_load((ROLE / "tasks/preflight.yml").read_text())
    name = "Assert the target's file paths stay inside the release"
    task = next(t for t in tasks if t["name"] == name)
    good, bad = ["cpu/model.xml", "cpu/model.bin"], ["../x", "/etc/passwd", "cpu/../../x", "a b"]
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [task], "vars": {
        "segedge_agent_bundle_dir": "b", "segedge_agent_target": "cpu",
        "segedge_agent__target_entry": {"model": "cpu/model.xml",
                                        "files": [{"path": p} for p in good + bad]}}}]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    proc = subprocess.run([str(playbook_bin), "-i", "localhost,", "-c", "local", "play.yml"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, NO_COLOR="1", ANSIBLE_NOCOLOR="1"))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    failed = set(re.findall(r"failed: \[localhost\] \(item=(.*?)\)", out))
    assert failed == set(bad), out[-3000:]


def test_example_inventory_and_defaults_are_secure():
    """TLS, one identity per device, no anonymous or plaintext listener, out of the box."""
    inv = REPO / "deploy/inventory"
    all_vars = yaml.safe_load((inv / "group_vars/all.yml").read_text())
    site = yaml.safe_load((inv / "group_vars/segedge.yml").read_text())
    assert all_vars["segedge_broker_auth"] == "certificate"
    assert all_vars["segedge_agent_mqtt_auth"] == "{{ segedge_broker_auth }}"
    assert site["segedge_agent_mqtt_tls"] is True and site["segedge_agent_mqtt_port"] == 8883
    assert "segedge_agent_mqtt_password" not in site, "no fleet-wide password"
    hosts = yaml.safe_load((inv / "example.yml").read_text())
    assert hosts["segedge_broker"]["hosts"], "the broker is part of the example fleet"
    agent = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    broker = yaml.safe_load((REPO / "deploy/roles/segedge_broker/defaults/main.yml").read_text())
    assert agent["segedge_agent_mqtt_tls"] is True and agent["segedge_agent_mqtt_port"] == 8883
    assert agent["segedge_agent_mqtt_auth"] == broker["segedge_broker_auth"] == "certificate"
    assert agent["segedge_agent_health_require_delivery"] is True
    assert broker["segedge_broker_loopback_port"] == 0
    conf = (REPO / "deploy/roles/segedge_broker/templates/mosquitto.conf.j2").read_text()
    assert "allow_anonymous false" in conf and "include_dir" not in conf
    assert conf.count("use_username_as_clientid true") == 2  # on every listener
    assert "/deploy/pki/" in (REPO / ".gitignore").read_text()
