"""Provision real booted Debian devices with deploy/site.yml and check what runs.

Order matters: the tests walk one fleet through provisioning, an idempotent re-run,
a check-mode run, a crash, a tampered release and a release whose agent is unhealthy.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.rig.rig import wait_for

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.rig, pytest.mark.timeout(900)]
SERVICE = "segedge-agent.service"
MAX_EXPOSURE = 2.0


def _fail_msg(session, out: str, *devices: str) -> str:
    journals = "\n".join(f"--- journal {d}:\n{session.devices[d].journal()}" for d in devices)
    return f"{out[-6000:]}\n{journals}"


def _health(dev) -> dict:
    out = dev.run("cat /var/lib/segedge/health.json").stdout
    return json.loads(out) if out.strip() else {}


def test_service_runs_as_dedicated_user(fleet):
    dev = fleet.devices["dev-cpu"]
    props = dev.unit("ActiveState", "SubState", "MainPID", "User", "Type")
    assert props["ActiveState"] == "active" and props["Type"] == "notify", (props, dev.journal())
    uid = dev.run(f"awk '/^Uid:/{{print $2}}' /proc/{props['MainPID']}/status").stdout.strip()
    assert uid == dev.run("id -u segedge").stdout.strip() != "0", (uid, props)
    groups = dev.run("id -nG segedge").stdout.split()
    assert {"video", "render"} <= set(groups), groups
    shell = dev.run("getent passwd segedge").stdout.strip().split(":")[-1]
    assert shell == "/usr/sbin/nologin"
    link = dev.run("readlink /opt/segedge/models/current").stdout.strip()
    assert link.endswith("/releases/tiny-0.0.1"), link
    shipped = dev.run("cd /opt/segedge/models/current && find . -type f | sort").stdout.split()
    assert sorted(shipped) == ["./cpu/model.bin", "./cpu/model.xml", "./manifest.json"], shipped
    assert dev.run("ls /var/cache/segedge | wc -l").stdout.strip() != "0", "model cache empty"
    # systemd says nothing about the unit's settings (unknown device classes, bad lines, ...)
    warnings = dev.run("journalctl -b --no-pager -o cat | "
                       f"grep -E '{SERVICE}(\\.d/[^:]*)?:[0-9]+:'")
    assert warnings.stdout.strip() == "", warnings.stdout


def test_status_online_and_masks_arrive(fleet):
    status = fleet.status("dev-cpu")
    assert status["state"] == "online", status
    assert status["model"]["version"] == "0.0.1" and status["device"] == "CPU", status
    masks = fleet.mqtt("segedge/dev-cpu/mask", count=3, timeout=30)
    assert len(masks) == 3, f"masks: {len(masks)}\n{fleet.devices['dev-cpu'].journal()}"
    mask = json.loads(masks[-1])
    assert mask["encoding"] == "png" and mask["mask"], sorted(mask)
    coverage = mask["coverage"]
    pet = coverage["pet"] if isinstance(coverage, dict) else coverage[1]
    assert 0.1 < pet < 0.9, coverage  # red left part of the camera frame is "pet"


def test_accelerator_lanes_fall_back_to_cpu(fleet):
    for name, device, pkg in (("dev-gpu", "GPU", "intel-opencl-icd"), ("dev-npu", "NPU", "libze1")):
        dev = fleet.devices[name]
        status = fleet.status(name)
        assert status["state"] in ("online", "degraded") and status["device"] == "CPU", status
        assert device in json.dumps(status), f"{device} failure not reported: {status}"
        assert "render" in dev.run("id -nG segedge").stdout.split()
        assert dev.run(f"dpkg-query -W -f='${{Status}}' {pkg}").stdout.endswith("installed")
        target = "gpu" if device == "GPU" else "npu"
        files = dev.run("cd /opt/segedge/models/current && find . -type f | sort").stdout.split()
        assert sorted(files) == sorted([f"./{target}/model.bin", f"./{target}/model.xml",
                                        "./manifest.json"]), files
    standin = fleet.devices["dev-npu"].run(
        "dpkg-query -W -f='${Status}' segedge-npu-driver-standin").stdout
    assert standin.endswith("installed"), standin
    rules = fleet.devices["dev-npu"].run("cat /etc/udev/rules.d/60-segedge.rules").stdout
    assert 'SUBSYSTEM=="accel"' in rules and 'GROUP="render"' in rules, rules


def test_myriad_lane_runs_onnx_on_openvino_2022_3(fleet):
    dev = fleet.devices["dev-myriad"]
    version = dev.run("/opt/segedge/venv/bin/python -c "
                      "'import sys, openvino.runtime as ov; print(sys.version_info[:2], "
                      "ov.get_version())'").stdout
    assert "(3, 9)" in version and "2022.3" in version, version
    status = fleet.status("dev-myriad")
    assert status["state"] in ("online", "degraded") and status["device"] == "CPU", status
    assert status["model"]["precision"] == "FP16" and "MYRIAD" in json.dumps(status), status
    files = dev.run("cd /opt/segedge/models/current && find . -type f | sort").stdout.split()
    assert sorted(files) == ["./manifest.json", "./myriad/model.onnx"], files
    assert fleet.mqtt("segedge/dev-myriad/mask", count=2, timeout=30), dev.journal()
    rules = dev.run("cat /etc/udev/rules.d/60-segedge.rules").stdout
    assert "03e7" in rules, rules


def test_second_run_changes_nothing(fleet):
    rc, out, rec = fleet.playbook()
    assert rc == 0, _fail_msg(fleet, out, *fleet.devices)
    changed = {h: r["changed"] for h, r in rec.items() if r["changed"]}
    assert not changed, f"not idempotent: {changed}\n" + "\n".join(
        line for line in out.splitlines() if line.startswith("changed:"))


def test_check_diff_run_changes_nothing(fleet):
    rc, out, rec = fleet.playbook("--check", "--diff")
    assert rc == 0, out[-6000:]
    assert all(r["changed"] == 0 for r in rec.values()), out[-6000:]


def test_unit_verifies_and_exposure_is_low(fleet):
    dev = fleet.devices["dev-cpu"]
    verify = dev.run(f"systemd-analyze verify /etc/systemd/system/{SERVICE} 2>&1")
    assert verify.returncode == 0 and verify.stdout.strip() == "", verify.stdout
    sec = dev.run(f"systemd-analyze security --no-pager {SERVICE}")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", sec.stdout)
    assert match, sec.stdout + sec.stderr
    exposure = float(match.group(1))
    (fleet.rig.rundir.parent / "exposure.txt").write_text(sec.stdout)
    assert exposure <= MAX_EXPOSURE, sec.stdout


def test_kill_9_restarts_the_agent(fleet):
    dev = fleet.devices["dev-cpu"]
    before = dev.unit("MainPID", "NRestarts")
    dev.run(f"kill -9 {before['MainPID']}", check=True)

    def restarted():
        now = dev.unit("MainPID", "NRestarts", "ActiveState")
        return (now["ActiveState"] == "active" and now["MainPID"] not in ("0", before["MainPID"])
                and int(now["NRestarts"]) > int(before["NRestarts"])) and now

    try:
        wait_for(restarted, 60, 0.5, "systemd to restart the agent")
    except TimeoutError as exc:
        pytest.fail(f"{exc}\n{dev.journal()}")
    wait_for(lambda: fleet.status("dev-cpu")["state"] == "online", 30, 1, "online again")


def test_config_change_alone_restarts_and_checks_health(fleet):
    dev = fleet.devices["dev-cpu"]
    pid = dev.unit("MainPID")["MainPID"]
    rc, out, rec = fleet.playbook("--limit", "dev-cpu", "--tags",
                                  "segedge_config,segedge_service,segedge_health",
                                  "-e", "segedge_agent_log_level=DEBUG")
    assert rc == 0 and rec["dev-cpu"]["changed"] >= 1, _fail_msg(fleet, out, "dev-cpu")
    assert "Wait until the agent reports healthy" in out
    assert 'log_level = "DEBUG"' in dev.run("cat /etc/segedge/agent.toml").stdout
    now = dev.unit("MainPID", "ActiveState")
    assert now["ActiveState"] == "active" and now["MainPID"] != pid, now


def test_tampered_release_is_refused(fleet):
    dev = fleet.devices["dev-cpu"]
    pid = dev.unit("MainPID")["MainPID"]
    rc, out, rec = fleet.playbook("--limit", "dev-cpu",
                                  "-e", f"segedge_agent_bundle_dir={fleet.bundles['tampered']}")
    assert rc != 0 and rec["dev-cpu"]["failed"] == 1, out[-4000:]
    assert "release tiny-0.0.2 refused" in out and "sha256 mismatch" in out, out[-4000:]
    assert dev.run("readlink /opt/segedge/models/current").stdout.strip().endswith("tiny-0.0.1")
    assert dev.run("test -e /opt/segedge/models/releases/tiny-0.0.2").returncode != 0
    assert dev.unit("MainPID")["MainPID"] == pid, "the running agent was restarted"
    assert _health(dev)["model"]["version"] == "0.0.1"


def test_release_the_agent_refuses_is_switched_back_before_any_restart(fleet):
    """A release whose IR cannot load (checksums fine): the warm-up only reports it, the
    agent's --check-config of the new configuration refuses it, and the role switches
    back before anything restarts. (A release that loads but does not deliver is rolled
    back by the health gate: test_security.py's wrong-broker test.)"""
    dev = fleet.devices["dev-cpu"]
    pid = dev.unit("MainPID")["MainPID"]
    # dev-cpu, the first host of the run, is its canary; its failure stops the playbook
    # before the rest, so dev-npu (the broken bundle has no npu target) is never touched.
    rc, out, rec = fleet.playbook("--limit", "dev-cpu,dev-npu", "-e", "segedge_serial=1",
                                  "-e", f"segedge_agent_bundle_dir={fleet.bundles['broken']}")
    assert rc != 0 and rec["dev-cpu"]["failed"] == 1, out[-4000:]
    assert "dev-npu" not in rec, f"the rollout went on after a failed batch: {rec}"
    assert "release tiny-0.0.3 refused on dev-cpu by the agent's --check-config" in out, \
        out[-4000:]
    assert "Switched back to tiny-0.0.1" in out, out[-4000:]
    assert dev.run("readlink /opt/segedge/models/current").stdout.strip().endswith("tiny-0.0.1")
    assert dev.run("test -e /opt/segedge/models/releases/tiny-0.0.3").returncode != 0
    assert dev.unit("MainPID")["MainPID"] == pid, "the running agent was restarted"
    health = _health(dev)
    assert health["state"] == "online" and health["model"]["version"] == "0.0.1", health
    assert dev.unit("ActiveState")["ActiveState"] == "active", dev.journal()


def test_wheelhouse_for_another_python_is_refused_before_any_change(fleet):
    dev = fleet.devices["dev-myriad"]
    pid = dev.unit("MainPID")["MainPID"]
    cp311 = fleet.wheelhouses["cp311"]
    rc, out, rec = fleet.playbook("--limit", "dev-myriad",
                                  "-e", f"segedge_agent_wheelhouse_dir={cp311}")
    assert rc != 0 and rec["dev-myriad"]["changed"] == 0, out[-4000:]
    assert "runs Python cp39" in out and "no openvino wheel" in out, out[-4000:]
    assert dev.unit("MainPID")["MainPID"] == pid


def test_config_the_agent_rejects_never_lands(fleet):
    dev = fleet.devices["dev-cpu"]
    before = dev.run("sha256sum /etc/segedge/agent.toml").stdout
    pid = dev.unit("MainPID")["MainPID"]
    rc, out, rec = fleet.playbook("--limit", "dev-cpu",
                                  "-e", '{"segedge_agent_devices": ["AUTO:GPU,CPU"]}')
    assert rc != 0 and rec["dev-cpu"]["failed"] == 1, out[-4000:]
    assert "configuration error" in out and "AUTO" in out, out[-4000:]
    assert dev.run("sha256sum /etc/segedge/agent.toml").stdout == before
    assert dev.unit("MainPID")["MainPID"] == pid


def test_upgrade_to_the_demo_model_and_prune(fleet):
    """The normal rollout: a new release (the real demo model) switches, restarts, is
    healthy, and old releases beyond segedge_agent_keep_releases go."""
    from tools.demo import find_bundle

    demo = find_bundle(REPO / "demo" / "models")  # the committed demo bundle, as the demo runs
    version = json.loads((demo / "manifest.json").read_text())["version"]
    dev = fleet.devices["dev-cpu"]
    # No canary phase: the demo model's confidence on the stand-in's synthetic frames says
    # nothing about a field (test_fleet_canary.py tests the gate).
    rc, out, rec = fleet.playbook("--limit", "dev-cpu", "-e", f"segedge_agent_bundle_dir={demo}",
                                  "-e", "segedge_agent_keep_releases=1",
                                  "-e", "segedge_canary_count=0")
    assert rc == 0, _fail_msg(fleet, out, "dev-cpu")
    releases = dev.run("ls /opt/segedge/models/releases").stdout.split()
    assert releases == [f"pets-mobile-{version}"], releases
    status = fleet.status("dev-cpu")
    assert status["state"] == "online", status
    assert (status["model"]["name"], status["model"]["version"]) == ("pets-mobile", version)
    assert fleet.mqtt("segedge/dev-cpu/mask", count=2, timeout=30), dev.journal()
