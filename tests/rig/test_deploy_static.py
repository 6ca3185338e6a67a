"""Static checks of the deploy role and the unit (no devices, no root): fast, always run."""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

from tests.conftest import require

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "deploy/roles/segedge_agent"
BROKER_ROLE = REPO / "deploy/roles/segedge_broker"
ROLES = [ROLE, BROKER_ROLE]
UNIT = REPO / "systemd/segedge-agent.service"
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
ANSIBLE_ENV = dict(os.environ, NO_COLOR="1", ANSIBLE_NOCOLOR="1")


def test_ansible_lint_production_profile():
    lint = Path(sys.executable).parent / "ansible-lint"
    require(lint.exists(), "ansible-lint (the deploy extra)")
    proc = subprocess.run([str(lint), "--profile", "production", "--offline", "-q",
                           "site.yml", "collect.yml", "roles/segedge_agent",
                           "roles/segedge_broker"],
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
def test_role_readme_in_galaxy_style_lists_every_default(role):
    """README.md per role (issue 21): Galaxy's sections; every variable of defaults/main.yml
    with its default (the section made by scripts/role_readme.py, kept current); an
    example playbook that parses and uses the role; the dependencies meta/main.yml says."""
    text = (role / "README.md").read_text()
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings[:4] == ["Requirements", "Role Variables", "Dependencies",
                            "Example Playbook"] and "License" in headings, headings
    defaults = yaml.safe_load((role / "defaults/main.yml").read_text())
    missing = [name for name in defaults if f"- `{name}`" not in text]
    assert missing == [], f"variables not in {role.name}/README.md: {missing}"
    proc = subprocess.run([sys.executable, str(REPO / "scripts/role_readme.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + " (run scripts/role_readme.py)"
    example = re.search(r"## Example Playbook\n\n```yaml\n(.+?)```", text, re.S)
    play = yaml.safe_load(example.group(1))
    assert play[0]["roles"][0]["role"] == role.name
    assert set(play[0]["roles"][0].get("vars", {})) <= set(defaults)
    deps = yaml.safe_load((role / "meta/main.yml").read_text())["dependencies"]
    assert deps == [] and "None (`meta/main.yml`: `dependencies: []`)" in text


def _placeholders(node, found, key=""):
    """Names of the variables whose values are documentation-only (TEST-NET, example.*)."""
    if isinstance(node, dict):
        for k, v in node.items():  # a key inside a variable's value (a camera's uri) is its
            variable = str(k).startswith(("segedge_", "ansible_")) or not key
            _placeholders(v, found, str(k) if variable else key)
    elif isinstance(node, list):
        for v in node:
            _placeholders(v, found, key)
    elif isinstance(node, str) and re.search(r"192\.0\.2\.|\.example\b|example\.", node):
        found.add(key)
    return found


def test_readme_says_what_to_edit_in_the_example_inventory():
    """Every value in the example inventory that reaches nothing (a TEST-NET address, an
    example.* name) is a variable the README's provisioning steps tell the reader to edit."""
    inventory = REPO / "deploy/inventory"
    found = _placeholders(yaml.safe_load((inventory / "example.yml").read_text()), set())
    for path in sorted((inventory / "group_vars").glob("*.yml")):
        _placeholders(yaml.safe_load(path.read_text()), found)
    readme = (REPO / "README.md").read_text()
    steps = readme[readme.index("To provision devices"):readme.index("| command | what |")]
    assert {"ansible_host", "segedge_broker_server_names", "segedge_agent_mqtt_host"} <= found
    assert [name for name in sorted(found) if f"`{name}`" not in steps] == [], steps
    assert "-i inventory/fleet.yml" in steps and "-i inventory/example.yml" not in steps


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_templates_carry_ansible_managed(role):
    ROLE = role
    for tpl in (ROLE / "templates").glob("*.j2"):
        assert tpl.read_text().startswith("{{ ansible_managed | comment }}"), tpl.name


def test_playbook_rolls_out_canaries_first_then_in_batches():
    """The broker first; then the canaries (segedge_canary_group, else the first host of the
    run) with the canary gate on and no failure allowed, so a refusal ends the playbook;
    then the rest in batches (a quarter by default), the first failed host stopping the
    roll-out (0 % may fail), unless the inventory says otherwise."""
    broker, pick, canaries, agents = yaml.safe_load((REPO / "deploy/site.yml").read_text())
    assert broker["roles"] == [{"role": "segedge_broker"}], "the broker (and its CA) first"
    assert pick["hosts"] == "{{ segedge_hosts | default('segedge') }}"
    assert all(t["run_once"] is True and "always" in t["tags"] for t in pick["tasks"])
    assert "segedge_canary_group | default('segedge_canary')" in pick["vars"]["segedge__canaries"]
    assert "segedge_canary_count | default(1)" in pick["vars"]["segedge__canaries"]
    assert canaries["hosts"] == "{{ groups['segedge__canary'] | default([]) }}"
    assert canaries["max_fail_percentage"] == 0 and "serial" not in canaries
    assert canaries["roles"] == [{"role": "segedge_agent", "vars": {"segedge_agent_canary": True}}]
    assert agents["hosts"] == "{{ groups['segedge__rest'] | default([]) }}"
    serial = re.fullmatch(r"\{\{ segedge_serial \| default\('(\d+)%'\) \}\}",
                          agents["serial"])
    assert serial and 0 < int(serial.group(1)) < 100, agents["serial"]
    assert agents["max_fail_percentage"] == "{{ segedge_max_fail_percentage | default(0) }}"
    assert agents["roles"] == [{"role": "segedge_agent"}]


def _canaries(tmp_path: Path, inventory: dict, *args: str) -> Dict[str, List[str]]:
    """site.yml's own canary choice (its second play) on ``inventory``: the groups it makes."""
    require(PLAYBOOK.exists(), "ansible-playbook (the deploy extra)")
    pick = yaml.safe_load((REPO / "deploy/site.yml").read_text())[1]
    report = {"hosts": "localhost", "gather_facts": False, "tasks": [{
        "ansible.builtin.copy": {"dest": str(tmp_path / "groups.json"), "mode": "0600",
                                 "content": "{{ {'canary': groups['segedge__canary'] | default([]),"
                                            " 'rest': groups['segedge__rest'] | default([])}"
                                            " | to_json }}"}}]}
    (tmp_path / "play.yml").write_text(yaml.safe_dump([pick, report]))
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    (tmp_path / "groups.json").unlink(missing_ok=True)
    limited = args[:1] == ("--limit",)
    proc = subprocess.run([str(PLAYBOOK), "-i", "hosts.yml", "-c", "local", "play.yml",
                           "--limit", "localhost," + (args[1] if limited else "all"),
                           *args[2 if limited else 0:]],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=dict(ANSIBLE_ENV, ANSIBLE_PYTHON_INTERPRETER=sys.executable))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((tmp_path / "groups.json").read_text())


def test_the_canaries_are_the_group_else_the_first_host_of_the_run(tmp_path):
    fleet = {"all": {"hosts": {"localhost": {}}, "children": {"segedge": {"children": {
        "cpu": {"hosts": {"cam-01": {}, "cam-02": {}}},
        "gpu": {"hosts": {"cam-03": {}, "cam-04": {}}}}}}}}
    assert _canaries(tmp_path, fleet) == {"canary": ["cam-01"],
                                          "rest": ["cam-02", "cam-03", "cam-04"]}
    # --limit: the first host of this run, never one outside it
    assert _canaries(tmp_path, fleet, "--limit", "cam-03,cam-04") == {
        "canary": ["cam-03"], "rest": ["cam-04"]}
    assert _canaries(tmp_path, fleet, "-e", "segedge_canary_count=2")["canary"] == [
        "cam-01", "cam-02"]
    assert _canaries(tmp_path, fleet, "-e", "segedge_canary_count=0") == {
        "canary": [], "rest": ["cam-01", "cam-02", "cam-03", "cam-04"]}
    grouped = json.loads(json.dumps(fleet))
    grouped["all"]["children"]["segedge_canary"] = {"hosts": {"cam-02": {}, "cam-04": {}}}
    assert _canaries(tmp_path, grouped) == {"canary": ["cam-02", "cam-04"],
                                            "rest": ["cam-01", "cam-03"]}
    assert _canaries(tmp_path, grouped, "--limit", "cam-03,cam-04")["canary"] == ["cam-04"]
    # a run without any of the group's hosts: its first host, still a canary phase
    assert _canaries(tmp_path, grouped, "--limit", "cam-01,cam-03")["canary"] == ["cam-01"]


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


# --- cameras and frames-in: the agent's configuration, the preflights ----------------
CAMERAS = [{"id": "front-door", "uri": "rtsp://10.0.0.5/stream"},
           {"id": "garden", "uri": "http://10.0.0.6/mjpeg", "max_publish_fps": 2,
            "loop": False, "fps": 5, "stall_timeout_s": 20, "reconnect_max_s": 60,
            "frame_every": 10, "mask_encoding": "rle", "overlay_interval_s": 2.5}]
FRAMES_IN = {"enabled": True, "senders": ["svc-1", "svc-2"], "max_bytes": 1048576}


def _run_play(tmp_path: Path, play: list, inventory: str = "localhost,") -> str:
    """Run ``play`` with the real ansible-playbook on this machine; return its output."""
    require(PLAYBOOK.exists(), "ansible-playbook (the deploy extra)")
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    proc = subprocess.run([str(PLAYBOOK), "-i", inventory, "-c", "local", "play.yml"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=dict(ANSIBLE_ENV, ANSIBLE_ROLES_PATH=str(REPO / "deploy/roles")))
    return proc.stdout + proc.stderr


def _failures(out: str) -> Dict[str, List[str]]:
    """host -> the messages of its failed tasks (or loop items)."""
    found: Dict[str, List[str]] = {}
    for host, body in re.findall(r"^(?:fatal|failed): \[([^\]]+)\].*?=> (\{.*\})$", out, re.M):
        found.setdefault(host, []).append(json.loads(body).get("msg", ""))
    return found


def _render_agent_toml(tmp_path: Path, variants: Dict[str, dict]) -> Dict[str, str]:
    """templates/agent.toml.j2 rendered by Ansible's template module over the role's
    defaults, once per variant (its vars on top); name -> the file's text."""
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    tasks = [{"name": f"render {name}", "vars": overrides,
              "ansible.builtin.template": {"src": str(ROLE / "templates/agent.toml.j2"),
                                           "dest": str(tmp_path / f"{name}.toml"),
                                           "mode": "0600"}}
             for name, overrides in variants.items()]
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": tasks,
             "vars": dict(defaults, ansible_python_interpreter=sys.executable,
                          segedge_agent_device_id="edge-01")}]
    out = _run_play(tmp_path, play)
    missing = [name for name in variants if not (tmp_path / f"{name}.toml").exists()]
    assert not missing, out[-3000:]
    return {name: (tmp_path / f"{name}.toml").read_text() for name in variants}


def _toml(text: str) -> dict:
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib
    return tomllib.loads(text)


def test_agent_toml_renders_cameras_and_frames_in(tmp_path):
    texts = _render_agent_toml(tmp_path, {
        "single": {},
        "cameras": {"segedge_agent_cameras": CAMERAS, "segedge_agent_frames_in": FRAMES_IN},
        "service": {"segedge_agent_source_uri": "",
                    "segedge_agent_frames_in": {"enabled": True, "senders": ["svc-1"]}}})
    single, cams, service = (_toml(texts[n]) for n in ("single", "cameras", "service"))
    # the single-camera form, as before: [source] uri, no [[cameras]], no [frames_in]
    assert single["source"]["uri"] == "/dev/video0" and single["device_id"] == "edge-01"
    assert "cameras" not in single and "frames_in" not in single
    # [[cameras]]: [source] keeps the defaults but no uri (the agent refuses both)
    assert "uri" not in cams["source"] and cams["source"]["stall_timeout_s"] == 10.0
    assert cams["cameras"][0] == {"id": "front-door", "uri": "rtsp://10.0.0.5/stream"}
    assert cams["cameras"][1] == {
        "id": "garden", "uri": "http://10.0.0.6/mjpeg", "max_publish_fps": 2.0, "loop": False,
        "fps": 5.0, "stall_timeout_s": 20.0, "reconnect_max_s": 60.0, "frame_every": 10,
        "mask_encoding": "rle", "overlay_interval_s": 2.5}
    assert isinstance(cams["cameras"][1]["frame_every"], int)
    # [frames_in]: the keys left out take the role's defaults
    assert cams["frames_in"] == {"enabled": True, "senders": ["svc-1", "svc-2"],
                                 "max_senders": 16, "max_bytes": 1048576,
                                 "stall_timeout_s": 30.0}
    # an inference service with no camera of its own
    assert service["cameras"] == [] and "uri" not in service["source"]
    assert service["frames_in"]["senders"] == ["svc-1"]


def test_agent_toml_renders_metrics_only_when_asked(tmp_path):
    texts = _render_agent_toml(tmp_path, {
        "off": {}, "on": {"segedge_agent_metrics_listen": "0.0.0.0:9108"}})
    assert "metrics" not in _toml(texts["off"])
    assert _toml(texts["on"])["metrics"] == {"listen": "0.0.0.0:9108"}


def test_rendered_multi_camera_config_passes_the_agents_check(tmp_path, tiny_bundle):
    """The real agent's --check-config (what the role's template task validates with)."""
    from edge_agent import config as agent_config

    if not hasattr(agent_config, "CameraConfig"):
        pytest.skip("the agent's [[cameras]] / [frames_in] configuration has not landed")
    models = tmp_path / "models"
    models.mkdir()
    (models / "current").symlink_to(tiny_bundle)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")  # a file source only has to exist for the check
    local = {"segedge_agent_models_dir": str(models), "segedge_agent_cache_dir": str(tmp_path),
             "segedge_agent_state_dir": str(tmp_path), "segedge_agent_mqtt_tls": False}
    texts = _render_agent_toml(tmp_path, {
        "single": local,
        "cameras": dict(local, segedge_agent_cameras=CAMERAS + [{"id": "file", "uri": str(clip)}],
                        segedge_agent_frames_in=FRAMES_IN),
        "service": dict(local, segedge_agent_source_uri="",
                        segedge_agent_frames_in={"enabled": True, "senders": ["svc-1"]})})
    agent = Path(sys.executable).parent / "segedge-agent"
    for name in texts:
        proc = subprocess.run([str(agent), "--check-config", "--config",
                               str(tmp_path / f"{name}.toml")],
                              capture_output=True, text=True, timeout=120,
                              env={"PATH": "/usr/bin:/bin"})
        assert proc.returncode == 0, (name, proc.stdout, proc.stderr, texts[name])
        assert "config OK" in proc.stdout, proc.stdout


def test_agent_preflight_refuses_bad_cameras_and_senders(tmp_path):
    """Each host has one mistake; the preflight names the host and the item."""
    tasks = yaml.safe_load((ROLE / "tasks/preflight.yml").read_text())
    picked = [t for t in tasks if "camera" in t["name"] or "frames-in" in t["name"]
              or t["name"] == "Assert the device has something to look at"]
    assert len(picked) == 5, [t["name"] for t in picked]
    good = {"segedge_agent_cameras": CAMERAS, "segedge_agent_frames_in": FRAMES_IN}
    hosts = {
        "ok": good,
        "ok-single": {"segedge_agent_cameras": [{"id": "ok-single", "uri": "/dev/video0"}]},
        "ok-anon": {"segedge_agent_mqtt_auth": "none",
                    "segedge_agent_frames_in": {"enabled": True}},
        "dup": {"segedge_agent_cameras": CAMERAS + [{"id": "garden", "uri": "rtsp://x/y"}]},
        "slash": {"segedge_agent_cameras": CAMERAS + [{"id": "back/yard", "uri": "rtsp://x"}]},
        "no-uri": {"segedge_agent_cameras": CAMERAS + [{"id": "porch"}]},
        "selfie": {"segedge_agent_cameras": CAMERAS + [{"id": "selfie", "uri": "rtsp://x"}]},
        "nothing": {"segedge_agent_source_uri": ""},
        "no-senders": {"segedge_agent_frames_in": {"enabled": True, "senders": []}},
        "sender-cam": dict(good, segedge_agent_frames_in={"enabled": True,
                                                          "senders": ["garden"]}),
    }
    base = {"segedge_agent_source_uri": "/dev/video0", "segedge_agent_cameras": [],
            "segedge_agent_frames_in": {"enabled": False}, "segedge_agent_mqtt_auth": "certificate",
            "segedge_agent_device_id": "{{ inventory_hostname }}"}
    role_vars = yaml.safe_load((ROLE / "vars/main.yml").read_text())  # tasks outside the role
    inventory = {"all": {"hosts": {h: dict(base, **v) for h, v in hosts.items()},
                         "vars": dict(role_vars, ansible_connection="local")}}
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inventory))
    out = _run_play(tmp_path, [{"hosts": "all", "gather_facts": False, "tasks": picked}],
                    inventory="inventory.yml")
    failed = _failures(out)
    assert set(failed) == set(hosts) - {"ok", "ok-single", "ok-anon"}, out[-4000:]
    expect = {
        "dup": "dup: camera id 'garden' is listed more than once",
        "slash": 'segedge_agent_cameras[2] (back/yard) has the id "back/yard": a camera id is',
        "no-uri": "no-uri: segedge_agent_cameras[2] (porch) has no uri",
        "selfie": "selfie: camera id 'selfie' is the device id",
        "nothing": "nothing: no camera",
        "no-senders": "no-senders: segedge_agent_frames_in is enabled but lists no senders",
        "sender-cam": 'sender-cam: frames-in sender "garden" is a camera id of this host',
    }
    for host, needle in expect.items():
        assert any(needle in msg for msg in failed[host]), (host, failed[host])


def test_broker_preflight_gathers_cameras_and_senders_and_refuses_clashes(tmp_path):
    """The broker role's preflight (real Ansible, the role's filter plugin) over one fleet
    per broker host: the good fleet's identities and ACL, each bad fleet's message."""
    fleets = {
        "good": {"good-1": {"segedge_agent_cameras": CAMERAS, "segedge_agent_frames_in": FRAMES_IN},
                 "good-2": {"segedge_agent_cameras": [{"id": "good-2", "uri": "/dev/video0"}]},
                 "good-3": {"segedge_agent_frames_in": {"enabled": False, "senders": ["off"]}}},
        "camera": {"cam-1": {"segedge_agent_cameras": CAMERAS},
                   "cam-2": {"segedge_agent_cameras": [{"id": "garden", "uri": "x"},
                                                       {"id": "cam-1", "uri": "y"}]}},
        "sender": {"snd-1": {"segedge_agent_frames_in": FRAMES_IN},
                   "snd-2": {"segedge_agent_frames_in": {"enabled": True,
                                                         "senders": ["svc-2", "dashboard"]}}},
        "name": {"bad-1": {"segedge_agent_cameras": [{"id": "a b", "uri": "x"}, {"uri": "y"}]}},
        "ha": {"ha-1": {"segedge_agent_cameras": [{"id": "cam.1", "uri": "x"},
                                                   {"id": "agent_ha-2", "uri": "y"}]},
               "ha-2": {"segedge_agent_cameras": [{"id": "cam_1", "uri": "x"},
                                                   {"id": "ha-2-b", "uri": "y"}]}},
    }
    brokers = {f"broker-{name}": {"segedge_broker_device_group": f"fleet_{name}"}
               for name in fleets}
    # a good fleet, but autosave_interval 0: Mosquitto would save only at a clean stop
    brokers["broker-autosave"] = {"segedge_broker_device_group": "fleet_good",
                                  "segedge_broker_autosave_interval": 0}
    children = {f"fleet_{name}": {"hosts": hosts} for name, hosts in fleets.items()}
    children["brokers"] = {"hosts": brokers}
    inventory = {"all": {"children": children,
                         "vars": {"ansible_connection": "local",
                                  "ansible_python_interpreter": sys.executable,
                                  "segedge_broker_subscribers": ["dashboard"],
                                  "segedge_broker_operators": ["operator"]}}}
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inventory))
    play = [{"hosts": "brokers", "gather_facts": False, "tasks": [
        {"ansible.builtin.include_role": {"name": "segedge_broker", "tasks_from": "preflight",
                                          "public": True}},
        {"ansible.builtin.copy": {
            "content": "{{ {'fleet': segedge_broker__fleet, 'identities': "
                       "segedge_broker__identities} | to_json }}",
            "dest": "{{ playbook_dir }}/{{ inventory_hostname }}.json", "mode": "0600"}},
        {"ansible.builtin.template": {"src": str(BROKER_ROLE / "templates/acl.j2"),
                                      "dest": "{{ playbook_dir }}/{{ inventory_hostname }}.acl",
                                      "mode": "0600"}}]}]
    out = _run_play(tmp_path, play, inventory="inventory.yml")
    failed = _failures(out)
    assert set(failed) == {f"broker-{n}" for n in fleets if n != "good"} | {
        "broker-autosave"}, out[-4000:]
    facts = json.loads((tmp_path / "broker-good.json").read_text())
    assert facts["fleet"] == [
        {"host": "good-1", "id": "good-1", "cameras": ["front-door", "garden"],
         "senders": ["svc-1", "svc-2"]},
        {"host": "good-2", "id": "good-2", "cameras": [], "senders": []},  # itself
        {"host": "good-3", "id": "good-3", "cameras": [], "senders": []}]  # frames_in off
    assert facts["identities"] == ["good-1", "good-2", "good-3", "dashboard", "operator",
                                   "svc-1", "svc-2"]
    acl = (tmp_path / "broker-good.acl").read_text()
    for line in ("topic write segedge/front-door/mask", "topic read segedge/garden/+/set",
                 "topic read segedge/good-1/frames_in/svc-2", "topic write segedge/svc-1/reply/#",
                 "topic write segedge/good-1/+/state", "topic write segedge/garden/status",
                 "topic write homeassistant/+/segedge_garden/#",
                 "user svc-1\ntopic write segedge/good-1/frames_in/svc-1\n"
                 "topic read segedge/svc-1/#\n"):
        assert line in acl, (line, acl)
    assert "off" not in acl.split()
    # a device writes only the agent's own leaves and reply trees: no command, no frame
    blocks = {b.split("\n", 1)[0]: b for b in re.split(r"^user ", acl, flags=re.M)[1:]}
    for device in ("good-1", "good-2", "good-3"):
        writes = re.findall(r"^topic write segedge/[^/]+/(.*)$", blocks[device], re.M)
        assert set(writes) == {"status", "mask", "stats", "quality", "frame", "overlay",
                               "settings", "+/state", "reply/#"}, (device, writes)
    expect = {
        "broker-camera": ["'garden' is a camera of host cam-1 and a camera of host cam-2",
                          "'cam-1' is the device id of host cam-1 and a camera of host cam-2"],
        "broker-sender": ["'svc-2' is a frames-in sender of host snd-1 and a frames-in sender "
                          "of host snd-2", "'dashboard' is a frames-in sender of host snd-2 "
                          "and a subscriber"],
        "broker-name": ['"a b" (a camera of host bad-1)', '"" (a camera of host bad-1)'],
        "broker-autosave": ["broker-autosave: bad settings", "autosave_interval at least 1",
                            "got 0"],
        "broker-ha": ["discovery node 'segedge_cam_1' is camera cam.1 of host ha-1 and camera "
                      "cam_1 of host ha-2", "discovery node 'segedge_agent_ha-2' is camera "
                      "agent_ha-2 of host ha-1 and the agent of host ha-2"],
    }
    for host, needles in expect.items():
        for needle in needles:
            assert any(needle in msg for msg in failed[host]), (host, needle, failed[host])


def test_example_inventory_passes_the_broker_preflight(tmp_path):
    """The example fleet (cameras and a frames-in sender on cam-02) is a valid one."""
    play = [{"hosts": "segedge_broker", "gather_facts": False, "tasks": [
        {"ansible.builtin.include_role": {"name": "segedge_broker", "tasks_from": "preflight",
                                          "public": True}},
        {"ansible.builtin.copy": {
            "content": "{{ {'fleet': segedge_broker__fleet, 'identities': "
                       "segedge_broker__identities} | to_json }}",
            "dest": "{{ playbook_dir }}/fleet.json", "mode": "0600"}}]}]
    (tmp_path / "vars.yml").write_text(yaml.safe_dump(
        {"ansible_python_interpreter": sys.executable}))
    require(PLAYBOOK.exists(), "ansible-playbook (the deploy extra)")
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    proc = subprocess.run([str(PLAYBOOK), "-i", str(REPO / "deploy/inventory/example.yml"),
                           "-c", "local", "-e", "@vars.yml", "play.yml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env=dict(ANSIBLE_ENV, ANSIBLE_ROLES_PATH=str(REPO / "deploy/roles")))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    facts = json.loads((tmp_path / "fleet.json").read_text())
    cam_02 = next(d for d in facts["fleet"] if d["host"] == "cam-02")
    assert cam_02 == {"host": "cam-02", "id": "cam-02", "cameras": ["entrance", "yard"],
                      "senders": ["pi-door"]}
    assert "pi-door" in facts["identities"]


def test_argument_specs_type_cameras_and_frames_in(tmp_path):
    """meta/argument_specs.yml (validated before the role runs) takes the documented keys
    and refuses a typo or a bad choice, per item."""
    spec = yaml.safe_load((ROLE / "meta/argument_specs.yml").read_text())
    options = spec["argument_specs"]["main"]["options"]
    cases = {"good": {"segedge_agent_cameras": CAMERAS, "segedge_agent_frames_in": FRAMES_IN},
             "typo": {"segedge_agent_cameras": [{"id": "a", "uri": "b", "max_fps": 2}]},
             "choice": {"segedge_agent_cameras": [{"id": "a", "uri": "b",
                                                   "mask_encoding": "jpeg"}]},
             "topic": {"segedge_agent_frames_in": {"enabled": True, "topic": "x/+"}}}
    tasks = [{"name": f"validate {name}", "ignore_errors": True,
              "ansible.builtin.validate_argument_spec": {
                  "argument_spec": {k: options[k] for k in args},
                  "provided_arguments": args}} for name, args in cases.items()]
    out = _run_play(tmp_path, [{"hosts": "localhost", "gather_facts": False, "tasks": tasks}])
    results = re.findall(r"^TASK \[validate (\w+)\].*?\n(ok|fatal): ", out, re.M | re.S)
    assert dict(results) == {"good": "ok", "typo": "fatal", "choice": "fatal",
                             "topic": "fatal"}, out[-4000:]
    assert "segedge_agent_cameras.max_fps. Supported parameters include" in out
    assert "mask_encoding must be one of: png, rle" in out


# --- ids: the roles' one rule against the agent's valid_id -----------------------------
TRICKY_IDS = ["a", "0", "cam-01", "cam_01", "cam.01", "CAM-01", "set", "a" * 128, "a" * 129,
              "", ".", "..", ".hidden", "-x", "_x", "x.", "x-", "a b", "a/b", "a+b", "a#b",
              "a\0b", "a\nb", "cam\n", "\ncam", "a\tb", "a\rb", "$SYS", "é", "caf\u00e9",
              "\uff41", "a\u200bb", "a:b", "a@b", "a\\b", "a'b", 'a"b', "a;b", "a*b", "a%b"]


def _id_patterns():
    agent = yaml.safe_load((ROLE / "vars/main.yml").read_text())["segedge_agent__id_pattern"]
    broker = yaml.safe_load((BROKER_ROLE / "vars/main.yml").read_text())[
        "segedge_broker__id_pattern"]
    return agent, broker


def test_roles_check_ids_with_the_agents_rule():
    """One pattern for device, camera and sender ids in both roles' preflights (no inline
    variant), and it is the agent's own rule (edge_agent.config.ID_PATTERN): the role
    deploys exactly the ids the agent takes at start."""
    from edge_agent.config import ID_PATTERN, valid_id

    agent_pattern, broker_pattern = _id_patterns()
    assert agent_pattern == broker_pattern == f"^{ID_PATTERN}\\Z"
    for role in ROLES:
        text = (role / "tasks/preflight.yml").read_text()
        assert "A-Za-z0-9][" not in text, f"{role.name}: an id regex outside vars/main.yml"
    # Ansible's match test is re.match(pattern, value)
    role_ok = {n for n in TRICKY_IDS if re.match(agent_pattern, n)}
    agent_ok = {n for n in TRICKY_IDS if valid_id(n)}
    assert role_ok == agent_ok == {"a", "0", "cam-01", "cam_01", "cam.01", "CAM-01", "set",
                                   "x.", "x-", "a" * 128}


def test_agent_preflight_refuses_device_ids_the_agent_or_the_acl_would_not_take(tmp_path):
    """The device id passes the same rule as cameras and senders (it was
    ``^[A-Za-z0-9._-]+$``: no length bound, a leading '.' or '-', a trailing newline), and
    the refusal names the host."""
    tasks = yaml.safe_load((ROLE / "tasks/preflight.yml").read_text())
    picked = [t for t in tasks if t["name"] in ("Assert the device id is usable",
                                                "Assert each camera has a usable id and a uri")]
    ids = {"ok": "cam-01", "long": "a" * 129, "dash": "-cam", "dot": ".cam", "nl": "cam\n",
           "tab": "cam\tx"}
    cams = {"ok": [], "camnl": [{"id": "door\n", "uri": "rtsp://x"},
                                {"id": "yard", "uri": "rtsp://y"}]}
    role_vars = ROLE / "vars/main.yml"  # the play runs the tasks outside the role
    vars_ = yaml.safe_load(role_vars.read_text()) if role_vars.exists() else {}
    hosts = {f"dev-{k}": {"segedge_agent_device_id": v, "segedge_agent_cameras": []}
             for k, v in ids.items()}
    hosts["cam-nl"] = {"segedge_agent_device_id": "cam-nl", "segedge_agent_cameras": cams["camnl"]}
    inventory = {"all": {"hosts": hosts, "vars": dict(vars_, ansible_connection="local")}}
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inventory))
    out = _run_play(tmp_path, [{"hosts": "all", "gather_facts": False, "tasks": picked}],
                    inventory="inventory.yml")
    failed = _failures(out)  # (cam-nl's item label spans two lines: not parsed there)
    assert set(re.findall(r"^(?:fatal|failed): \[([^\]]+)\]", out, re.M)) == {
        "dev-long", "dev-dash", "dev-dot", "dev-nl", "dev-tab", "cam-nl"}, out[-4000:]
    assert len(picked) == 2, [t["name"] for t in tasks]
    for host in ("dev-long", "dev-dash", "dev-dot", "dev-nl", "dev-tab"):
        assert any(f"{host}: segedge_agent_device_id" in m for m in failed[host]), failed[host]
    assert 'cam-nl: segedge_agent_cameras[0] (door\\n) has the id \\"door\\\\n\\"' in out, \
        out[-3000:]


def test_broker_preflight_plans_sites_and_refuses_bridge_misconfigurations(tmp_path):
    """Sites, bridged (real Ansible, the role's preflight and templates): each broker serves
    its own site's devices, the central one lists the bridges, a site broker gets its
    bridge; an unknown site, a site broker without a central broker or missing bridge
    certificate files are refused with the host named."""
    def inventory(brokers, devices):
        return {"all": {"children": {"segedge_broker": {"hosts": brokers},
                                     "segedge": {"hosts": devices}},
                        "vars": {"ansible_connection": "local",
                                 "ansible_python_interpreter": sys.executable,
                                 "segedge_broker_subscribers": ["dashboard"],
                                 "segedge_broker_operators": ["operator"]}}}
    good = inventory(
        {"central": {"ansible_host": "192.0.2.1"},
         "broker-a": {"segedge_broker_site": "site-a"},
         "broker-b": {"segedge_broker_site": "site-b", "segedge_broker_central": "central",
                      "segedge_broker_bridge_address": "central.example.net"},
         "broker-c": {"segedge_broker_site": "site-c",
                      "segedge_broker_bridge_certfile": str(tmp_path / "none/bridge.crt"),
                      "segedge_broker_bridge_keyfile": str(tmp_path / "none/bridge.key")}},
        {"dev-a1": {"segedge_site": "site-a", "segedge_agent_cameras": CAMERAS},
         "dev-b1": {"segedge_site": "site-b"}, "dev-c1": {"segedge_site": "site-c"},
         "dev-0": {}})
    bad = inventory({"b-x": {"segedge_broker_site": "site-x"},
                     "b-y": {"segedge_broker_site": "site-y"}},
                    {"d-x": {"segedge_site": "site-x"}, "d-y": {"segedge_site": "site-y"},
                     "d-z": {"segedge_site": "site-z"}})
    play = [{"hosts": "segedge_broker", "gather_facts": False, "tasks": [
        {"ansible.builtin.include_role": {"name": "segedge_broker", "tasks_from": "preflight",
                                          "public": True}},
        {"ansible.builtin.copy": {
            "content": "{{ {'fleet': segedge_broker__fleet, 'identities': "
                       "segedge_broker__identities, 'uplink': segedge_broker__uplink} | to_json }}",
            "dest": "{{ playbook_dir }}/{{ inventory_hostname }}.json", "mode": "0600"}},
        {"ansible.builtin.template": {"src": str(BROKER_ROLE / "templates/acl.j2"),
                                      "dest": "{{ playbook_dir }}/{{ inventory_hostname }}.acl",
                                      "mode": "0600"}},
        {"ansible.builtin.template": {"src": str(BROKER_ROLE / "templates/bridge.conf.j2"),
                                      "dest": "{{ playbook_dir }}/{{ inventory_hostname }}.bridge",
                                      "mode": "0600"},
         "when": "segedge_broker__uplink | length > 0"}]}]
    outs = {}
    for name, inv in (("good", good), ("bad", bad)):
        (tmp_path / f"{name}.yml").write_text(yaml.safe_dump(inv))
        outs[name] = _run_play(tmp_path, play, inventory=f"{name}.yml")
    failed = _failures(outs["good"])
    assert set(failed) == {"broker-c"}, outs["good"][-4000:]
    assert any("broker-c: bridge to central refused: segedge_broker_bridge_certfile" in m
               and "none/bridge.crt' is missing on the controller" in m
               for m in failed["broker-c"]), failed
    facts = {h: json.loads((tmp_path / f"{h}.json").read_text())
             for h in ("central", "broker-a", "broker-b")}
    assert [d["id"] for d in facts["central"]["fleet"]] == ["dev-0"]
    assert facts["central"]["identities"] == ["dev-0", "dashboard", "operator",
                                              "bridge-site-a", "bridge-site-b", "bridge-site-c"]
    assert [d["id"] for d in facts["broker-a"]["fleet"]] == ["dev-a1"]
    assert facts["broker-a"]["identities"] == ["dev-a1", "dashboard", "operator",
                                               "bridge-site-a"]
    assert facts["central"]["uplink"] == {}
    central_acl = (tmp_path / "central.acl").read_text()
    blocks = {b.split("\n", 1)[0]: b for b in re.split(r"^user ", central_acl, flags=re.M)[1:]}
    assert set(blocks) == {"dev-0", "bridge-site-a", "bridge-site-b", "bridge-site-c",
                           "dashboard", "operator"}, "the central lists bridges, not devices"
    assert "topic write segedge/garden/status" in blocks["bridge-site-a"]  # dev-a1's camera
    assert "topic read segedge/dev-a1/+/set" in blocks["bridge-site-a"]
    assert "dev-b1" not in blocks["bridge-site-a"] and "dev-a1" not in blocks["bridge-site-b"]
    site_acl = (tmp_path / "broker-a.acl").read_text()
    assert "user dev-a1" in site_acl and "dev-b1" not in site_acl and "bridge" not in site_acl
    bridge_a = (tmp_path / "broker-a.bridge").read_text()
    assert "address 192.0.2.1:8883" in bridge_a  # the central's ansible_host by default
    assert "address central.example.net:8883" in (tmp_path / "broker-b.bridge").read_text()
    for line in ("remote_clientid bridge-site-a", "cleansession false",
                 "bridge_protocol_version mqttv50", "bridge_insecure false",
                 "topic segedge/dev-a1/stats out 1", "topic segedge/dev-a1/mask out 0",
                 "topic segedge/garden/+/set in 1", "topic segedge/dev-a1/reply/# out 1"):
        assert line in bridge_a, line
    assert "dev-b1" not in bridge_a
    failed = _failures(outs["bad"])
    assert set(failed) == {"b-x", "b-y"}, outs["bad"][-4000:]
    for host in ("b-x", "b-y"):
        msg = " ".join(failed[host])
        assert f"{host}: bridged sites refused" in msg, msg
        assert "device host d-z: segedge_site 'site-z' is an unknown site" in msg, msg
        assert "site broker b-x (site 'site-x'): no central broker" in msg, msg


def test_sites_example_inventory_passes_the_broker_preflight(tmp_path):
    """deploy/inventory/sites-example.yml: two site brokers bridged to a central one; the
    devices find their site's broker through their site group, with no host var."""
    play = [{"hosts": "segedge_broker", "gather_facts": False, "tasks": [
        {"ansible.builtin.include_role": {"name": "segedge_broker", "tasks_from": "preflight",
                                          "public": True}},
        {"ansible.builtin.copy": {
            "content": "{{ {'fleet': segedge_broker__fleet | map(attribute='id') | list,"
                       " 'identities': segedge_broker__identities,"
                       " 'mqtt_host': hostvars[(segedge_broker__fleet + [{'host': ''}])[0].host]"
                       ".segedge_agent_mqtt_host | default('')} | to_json }}",
            "dest": "{{ playbook_dir }}/{{ inventory_hostname }}.json", "mode": "0600"}}]}]
    (tmp_path / "vars.yml").write_text(yaml.safe_dump(
        {"ansible_python_interpreter": sys.executable}))
    require(PLAYBOOK.exists(), "ansible-playbook (the deploy extra)")
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    proc = subprocess.run([str(PLAYBOOK), "-i", str(REPO / "deploy/inventory/sites-example.yml"),
                           "-c", "local", "-e", "@vars.yml", "play.yml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env=dict(ANSIBLE_ENV, ANSIBLE_ROLES_PATH=str(REPO / "deploy/roles")))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    facts = {h: json.loads((tmp_path / f"{h}.json").read_text())
             for h in ("central-01", "broker-north", "broker-south")}
    assert facts["central-01"]["fleet"] == []
    assert facts["central-01"]["identities"] == ["dashboard", "homeassistant", "operator",
                                                 "bridge-north", "bridge-south"]
    assert facts["broker-north"]["fleet"] == ["cam-n1", "cam-n2"]
    assert facts["broker-north"]["identities"][-1] == "bridge-north"
    assert facts["broker-north"]["mqtt_host"] == "broker-north.example.net"
    assert facts["broker-south"]["fleet"] == ["cam-s1"]
    assert facts["broker-south"]["mqtt_host"] == "broker-south.example.net"
