"""Session fixture: real booted Debian devices provisioned by the deploy playbook.

Builds (or reuses from .rig/cache) a bookworm and a bullseye root and the device
wheelhouses, boots four devices in their own network namespaces, starts Mosquitto
(with passwords) and an MJPEG camera stand-in in the controller namespace, and
tears all of it down at the end, also after a failure.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from tests.conftest import require
from tests.rig.rig import CONTROLLER_IP, Rig, recap, sh

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
RIG_DIR = REPO / ".rig"
MQTT_PORT, CAMERA_PORT = 1883, 8081
AGENT_USER, AGENT_PASSWORD = "segedge", "rig-secret-" + uuid.uuid4().hex[:8]
TEST_USER, TEST_PASSWORD = "tester", "tester-" + uuid.uuid4().hex[:8]

# name -> (suite, group, host vars)
LANES = {
    "dev-cpu": ("bookworm", "cpu", {}),
    "dev-gpu": ("bookworm", "gpu", {"segedge_agent_health_states": ["online", "degraded"]}),
    "dev-npu": ("bookworm", "npu", {"segedge_agent_health_states": ["online", "degraded"]}),
    # OpenVINO 2022.3's pip wheel has no MYRIAD plugin: its CPU plugin stands in for the NCS2.
    "dev-myriad": ("bullseye", "myriad", {"segedge_agent_devices": ["MYRIAD", "CPU"],
                                          "segedge_agent_health_states": ["online", "degraded"],
                                          "wheelhouse": "cp39"}),
}
TIMINGS: Dict[str, float] = {}


def log(msg: str) -> None:
    sys.stderr.write(f"[rig {time.strftime('%H:%M:%S')}] {msg}\n")


def _wheelhouses() -> Dict[str, Path]:
    out = {"cp311": RIG_DIR / "wheelhouse" / "cp311",
           "cp39": RIG_DIR / "wheelhouse" / "cp39-ov2022.3"}
    env = dict(os.environ, PIP=f"{sys.executable} -m pip")
    sh(["bash", "deploy/build_wheelhouse.sh", "--python", "3.11", "--out", str(out["cp311"])],
       cwd=REPO, env=env, timeout=600)
    sh(["bash", "deploy/build_wheelhouse.sh", "--python", "3.9", "--openvino", "==2022.3.*",
        "--out", str(out["cp39"])], cwd=REPO, env=env, timeout=600)
    return out


def _rewrite_target(bundle: Path, target: str) -> None:
    """Recompute the manifest's checksums of ``target`` (a consistent but broken release)."""
    from edge_agent import manifest as mf

    m = mf.load_manifest(bundle)
    entry = m.targets[target]
    files = [mf.file_entry(bundle, bundle / f.path) for f in entry.files]
    targets = dict(m.targets, **{target: dataclasses.replace(entry, files=files)})
    all_files = sorted((f for e in targets.values() for f in e.files), key=lambda f: f.path)
    mf.write_manifest(bundle, dataclasses.replace(m, targets=targets, files=all_files))


def _bundles(root: Path) -> Dict[str, Path]:
    from tests.helpers.tiny_bundle import add_myriad_target, make_tiny_bundle

    good = add_myriad_target(make_tiny_bundle(root, version="0.0.1"))
    tampered = make_tiny_bundle(root, version="0.0.2", targets=("cpu",))
    data = bytearray((tampered / "cpu/model.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content: only the sha256 tells
    (tampered / "cpu/model.bin").write_bytes(bytes(data))
    broken = make_tiny_bundle(root, version="0.0.3", targets=("cpu",))
    (broken / "cpu/model.xml").write_text("<?xml version='1.0'?>\n<net name='broken'>\n")
    _rewrite_target(broken, "cpu")  # checksums fine, the agent cannot load it
    return {"good": good, "tampered": tampered, "broken": broken}


def _standin_deb(root: Path) -> Path:
    """A tiny .deb in place of Intel's NPU driver packages (not in Debian, not downloadable
    here): exercises the role's ship-and-install path for controller-side .deb files."""
    pkg = root / "segedge-npu-driver-standin"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "usr/share/segedge-npu-driver-standin").mkdir(parents=True)
    (pkg / "usr/share/segedge-npu-driver-standin/README").write_text("rig stand-in\n")
    (pkg / "DEBIAN/control").write_text(
        "Package: segedge-npu-driver-standin\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: segedge rig <rig@localhost>\nDescription: stand-in for the NPU driver\n")
    out = root / "segedge-npu-driver-standin_1.0_all.deb"
    sh(["dpkg-deb", "--root-owner-group", "-b", str(pkg), str(out)])
    return out


def _inventory(rig: Rig, key: Path, wheelhouses: Dict[str, Path], bundle: Path,
               vault_block: str) -> Path:
    inv_dir = rig.rundir / "inventory"
    shutil.copytree(REPO / "deploy/inventory/group_vars", inv_dir / "group_vars",
                    ignore=shutil.ignore_patterns("segedge.yml"))
    groups: Dict[str, Dict] = {}
    for name, (_suite, group, hostvars) in LANES.items():
        dev = rig.devices[name]
        hv = {k: v for k, v in hostvars.items() if k != "wheelhouse"}
        hv["ansible_host"] = dev.ip
        hv["segedge_agent_wheelhouse_dir"] = str(wheelhouses[hostvars.get("wheelhouse", "cp311")])
        if group == "npu":
            hv["segedge_agent_deb_files"] = [str(_standin_deb(rig.rundir / "debs"))]
        groups.setdefault(group, {"hosts": {}})["hosts"][name] = hv
    svars = {
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(key),
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        "ansible_python_interpreter": "/usr/bin/python3",
        "segedge_agent_bundle_dir": str(bundle),
        "segedge_agent_mqtt_host": CONTROLLER_IP,
        "segedge_agent_mqtt_port": MQTT_PORT,
        "segedge_agent_mqtt_username": AGENT_USER,
        "segedge_agent_source_uri": f"http://{CONTROLLER_IP}:{CAMERA_PORT}/cam.mjpg",
        "segedge_agent_stats_interval_s": 2.0,
        "segedge_agent_health_timeout_s": 60,
    }
    body = json.dumps({"segedge": {"vars": svars, "children": groups}}, indent=1)
    # The MQTT password as Ansible Vault ciphertext, as in a real inventory.
    (inv_dir / "group_vars" / "segedge.yml").write_text("---\n" + vault_block + "\n")
    path = inv_dir / "hosts.yml"
    path.write_text(body)  # JSON is YAML
    return path


class RigSession:
    def __init__(self, rig: Rig, inventory: Path, vault_pass: Path, bundles: Dict[str, Path]):
        self.rig, self.inventory, self.vault_pass = rig, inventory, vault_pass
        self.bundles = bundles
        self.runs = 0

    @property
    def devices(self):
        return self.rig.devices

    def playbook(self, *args: str, timeout: float = 600) -> Tuple[int, str, Dict]:
        self.runs += 1
        env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "deploy/ansible.cfg"),
                   ANSIBLE_NOCOLOR="1",
                   ANSIBLE_FORCE_COLOR="0", ANSIBLE_HOST_KEY_CHECKING="False",
                   ANSIBLE_SSH_ARGS="-o ControlMaster=auto -o ControlPersist=30s",
                   ANSIBLE_SSH_CONTROL_PATH_DIR=str(self.rig.rundir / "cp"),
                   ANSIBLE_LOCAL_TEMP=str(self.rig.rundir / "ansible-tmp"),
                   ANSIBLE_FORKS="8",
                   ANSIBLE_LOG_PATH=str(self.rig.rundir.parent / "ansible-timed.log"))
        argv = [str(VENV_BIN / "ansible-playbook"), "-i", str(self.inventory),
                str(REPO / "deploy/site.yml"), "--vault-password-file", str(self.vault_pass),
                "-e", "segedge_serial=100%", *args]
        t0 = time.monotonic()
        proc = self.rig.ns_exec(argv, check=False, timeout=timeout, env=env, cwd=REPO)
        out = proc.stdout + proc.stderr
        (self.rig.rundir.parent / f"ansible-{self.runs:02d}.log").write_text(
            " ".join(argv) + "\n" + out)
        log(f"ansible-playbook {' '.join(args)} -> rc {proc.returncode} in "
            f"{time.monotonic() - t0:.1f}s")
        return proc.returncode, out, recap(out)

    def mqtt(self, topic: str, count: int = 1, timeout: int = 30,
             retained_only: bool = False) -> List[str]:
        argv = ["mosquitto_sub", "-h", CONTROLLER_IP, "-p", str(MQTT_PORT), "-u", TEST_USER,
                "-P", TEST_PASSWORD, "-t", topic, "-C", str(count), "-W", str(timeout)]
        if retained_only:
            argv.append("--retained-only")
        proc = self.rig.ns_exec(argv, check=False, timeout=timeout + 10)
        return [line for line in proc.stdout.splitlines() if line.strip()]

    def status(self, device: str) -> Dict:
        msgs = self.mqtt(f"segedge/{device}/status", retained_only=True, timeout=10)
        assert msgs, f"no retained status for {device}\n{self.devices[device].journal()}"
        return json.loads(msgs[-1])


def _start_broker(rig: Rig) -> None:
    work = rig.rundir / "mosquitto"
    work.mkdir()
    pw = work / "passwd"
    sh(["mosquitto_passwd", "-c", "-b", str(pw), AGENT_USER, AGENT_PASSWORD])
    sh(["mosquitto_passwd", "-b", str(pw), TEST_USER, TEST_PASSWORD])
    conf = work / "mosquitto.conf"
    conf.write_text("\n".join([
        "user root", f"listener {MQTT_PORT} {CONTROLLER_IP}", "allow_anonymous false",
        f"password_file {pw}", "persistence false", f"log_dest file {work / 'mosquitto.log'}",
        "log_type error", "log_type warning", "log_type notice", ""]))
    rig.start_in_controller(["mosquitto", "-c", str(conf)], work / "stdout.log")
    rig.wait_port(CONTROLLER_IP, MQTT_PORT, 15)


@pytest.fixture(scope="session")
def rig_session(tmp_path_factory):
    for tool in ("mmdebstrap", "systemd-nspawn", "ip", "ssh", "ssh-keygen", "mosquitto",
                 "mosquitto_sub", "mosquitto_passwd", "nsenter"):
        require(shutil.which(tool) is not None, f"{tool} (scripts/setup.sh all)")
    require(os.geteuid() == 0, "root (network namespaces, systemd-nspawn)")
    require((VENV_BIN / "ansible-playbook").exists(), "ansible-playbook (the deploy extra)")
    from tests.rig.roots import ensure_root

    t0 = time.monotonic()
    with ThreadPoolExecutor(2) as pool:  # a cold cache builds both roots at once
        futures = {s: pool.submit(ensure_root, s, log) for s in ("bookworm", "bullseye")}
        roots = {suite: future.result() for suite, future in futures.items()}
    TIMINGS["roots_s"] = time.monotonic() - t0
    t1 = time.monotonic()
    wheelhouses = _wheelhouses()
    TIMINGS["wheelhouses_s"] = time.monotonic() - t1

    session = uuid.uuid4().hex[:5]
    rundir = RIG_DIR / "run" / session
    # Logs of earlier rig sessions: keep the newest few (their devices are gone already).
    old = sorted((RIG_DIR / "run").glob("*"), key=lambda p: p.stat().st_mtime)[:-3] \
        if (RIG_DIR / "run").exists() else []
    for stale in old:
        if not any((stale / "devices").glob("*/root")):
            shutil.rmtree(stale, ignore_errors=True)
    rundir.mkdir(parents=True)
    rig = Rig(name=f"sg{session}", rundir=rundir / "devices")
    rig.rundir.mkdir()
    try:
        key = rundir / "id_ed25519"
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "segedge-rig", "-f", str(key)])
        vault_pass = rundir / "vault-pass"
        vault_pass.write_text(uuid.uuid4().hex + "\n")
        vault_block = sh([str(VENV_BIN / "ansible-vault"), "encrypt_string",
                          "--vault-password-file", str(vault_pass), "--name",
                          "segedge_agent_mqtt_password", AGENT_PASSWORD]).stdout
        bundles = _bundles(rundir / "bundles")
        t2 = time.monotonic()
        rig.setup_controller()
        _start_broker(rig)
        rig.start_in_controller([sys.executable, "-m", "tests.helpers.mjpeg_server", "--host",
                                 CONTROLLER_IP, "--port", str(CAMERA_PORT)],
                                rundir / "camera.log", cwd=REPO)
        rig.wait_port(CONTROLLER_IP, CAMERA_PORT, 30)
        pub = (rundir / "id_ed25519.pub").read_text()
        for name, (suite, _group, _hv) in LANES.items():
            rig.add_device(name, suite, roots[suite], pub)
        for dev in rig.devices.values():
            rig.boot(dev)
        for dev in rig.devices.values():
            rig.wait_booted(dev)
        TIMINGS["boot_s"] = time.monotonic() - t2
        inventory = _inventory(rig, key, wheelhouses, bundles["good"], vault_block)
        session_obj = RigSession(rig, inventory, vault_pass, bundles)
        session_obj.wheelhouses = wheelhouses
        yield session_obj
    finally:
        t3 = time.monotonic()
        cp = rig.rundir / "cp"
        if cp.exists():
            for sock in cp.iterdir():  # ssh ControlPersist masters of this session
                subprocess.run(["ssh", "-O", "exit", "-o", f"ControlPath={sock}", "x"],
                               capture_output=True, timeout=10)
        rig.close(log)
        TIMINGS["teardown_s"] = time.monotonic() - t3
        log("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in TIMINGS.items()))
        (rundir / "timings.json").write_text(json.dumps(TIMINGS, indent=1))
