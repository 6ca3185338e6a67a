"""Real devices for the rig: network namespaces, booted Debian roots, broker, camera.

Topology (all addresses in 127.0.0.0/8, all inside namespaces this module creates):

    controller ns <name>-c: bridge 127.77.0.1/24, Mosquitto :1883, MJPEG camera :8081,
                            ansible-playbook and mosquitto_sub run here (ip netns exec)
    device ns <name>-dN:    eth0 127.77.0.(10+N)/24, systemd-nspawn -b of a copied root
                            (real systemd as PID 1, sshd), reached over SSH as root

Everything created is recorded and torn down by ``Rig.close()`` (also on failure);
nothing outside these namespaces and the run directory is touched.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

SUBNET = "127.77.0"
CONTROLLER_IP = f"{SUBNET}.1"


def sh(argv: List[str], check: bool = True, timeout: float = 60,
       **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@dataclass
class Device:
    name: str
    index: int
    suite: str
    root: Path
    netns: str
    rundir: Path
    process: Optional[subprocess.Popen] = None

    @property
    def ip(self) -> str:
        return f"{SUBNET}.{10 + self.index}"

    @property
    def leader(self) -> int:
        """PID (host view) of the device's systemd."""
        out = sh(["ps", "--ppid", str(self.process.pid), "-o", "pid="], check=False).stdout
        pids = [int(p) for p in out.split()]
        if not pids:
            raise RuntimeError(f"{self.name}: no systemd under nspawn pid {self.process.pid}")
        return pids[0]

    def run(self, cmd: str, check: bool = False,
            timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a shell command inside the device (all its namespaces, as root)."""
        return sh(["nsenter", "-t", str(self.leader), "-a", "/bin/sh", "-c", cmd],
                  check=check, timeout=timeout)

    def journal(self, unit: str = "segedge-agent.service", lines: int = 60) -> str:
        try:
            return self.run(f"journalctl -u {unit} -n {lines} --no-pager -o short-precise").stdout
        except Exception as exc:  # noqa: BLE001 - diagnostics only
            return f"(no journal: {exc})"

    def unit(self, *props: str, unit: str = "segedge-agent.service") -> Dict[str, str]:
        out = self.run(f"systemctl show {unit} -p {','.join(props)}").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@dataclass
class Rig:
    name: str  # short prefix for namespaces/links (<= 8 chars)
    rundir: Path
    devices: Dict[str, Device] = field(default_factory=dict)
    netns: List[str] = field(default_factory=list)
    processes: List[subprocess.Popen] = field(default_factory=list)

    @property
    def controller(self) -> str:
        return f"{self.name}-c"

    # --- namespaces ---------------------------------------------------------
    def _sysctls(self, ns: str, ifaces: List[str]) -> None:
        keys = ["all", "default", *ifaces]
        sh(["ip", "netns", "exec", ns, "sysctl", "-qw",
            *[f"net.ipv4.conf.{k}.route_localnet=1" for k in keys]])

    def setup_controller(self) -> None:
        ns = self.controller
        sh(["ip", "netns", "add", ns])
        self.netns.append(ns)
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        sh(["ip", "-n", ns, "link", "add", "br0", "type", "bridge"])
        sh(["ip", "-n", ns, "link", "set", "br0", "up"])
        self._sysctls(ns, ["br0"])
        sh(["ip", "-n", ns, "addr", "add", f"{CONTROLLER_IP}/24", "dev", "br0"])

    def ns_exec(self, argv: List[str], **kw) -> subprocess.CompletedProcess:
        return sh(["ip", "netns", "exec", self.controller, *argv], **kw)

    def start_in_controller(self, argv: List[str], log: Path, **kw) -> subprocess.Popen:
        with open(log, "wb") as handle:
            proc = subprocess.Popen(["ip", "netns", "exec", self.controller, *argv],
                                    stdout=handle, stderr=subprocess.STDOUT, **kw)
        self.processes.append(proc)
        return proc

    def wait_port(self, host: str, port: int, timeout: float = 30,
                  ns: Optional[str] = None) -> None:
        ns = ns or self.controller

        def probe():
            return sh(["ip", "netns", "exec", ns, "bash", "-c",
                       f"exec 3<>/dev/tcp/{host}/{port}"], check=False, timeout=5).returncode == 0

        wait_for(probe, timeout, 0.2, f"{host}:{port} in {ns}")

    # --- devices ------------------------------------------------------------
    def add_device(self, name: str, suite: str, pristine: Path, pubkey: str) -> Device:
        index = len(self.devices)
        ns = f"{self.name}-d{index}"
        dev = Device(name=name, index=index, suite=suite, root=self.rundir / name / "root",
                     netns=ns, rundir=self.rundir / name)
        dev.rundir.mkdir(parents=True, exist_ok=True)
        sh(["cp", "-a", "--reflink=auto", str(pristine), str(dev.root)], timeout=300)
        (dev.root / "etc/hostname").write_text(name + "\n")
        ssh_dir = dev.root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(pubkey)
        os.chmod(ssh_dir / "authorized_keys", 0o600)
        sh(["ip", "netns", "add", ns])
        self.netns.append(ns)
        veth = f"{self.name}v{index}"
        sh(["ip", "link", "add", veth, "netns", self.controller, "type", "veth",
            "peer", "name", "eth0", "netns", ns])
        sh(["ip", "-n", self.controller, "link", "set", veth, "master", "br0", "up"])
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
        self._sysctls(ns, ["eth0"])
        self._sysctls(self.controller, [veth])
        sh(["ip", "-n", ns, "addr", "add", f"{dev.ip}/24", "dev", "eth0"])
        self.devices[name] = dev
        return dev

    def boot(self, dev: Device, timeout: float = 60) -> None:
        with open(dev.rundir / "console.log", "wb") as log:
            dev.process = subprocess.Popen(
                ["systemd-nspawn", "-D", str(dev.root), "-M", f"{self.name}{dev.name}"[:64],
                 "--register=no", "--keep-unit",
                 f"--network-namespace-path=/run/netns/{dev.netns}", "-b",
                 "--console=read-only"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.processes.append(dev.process)

    def wait_booted(self, dev: Device, timeout: float = 90) -> None:
        try:
            self.wait_port(dev.ip, 22, timeout)
        except TimeoutError as exc:
            console = (dev.rundir / "console.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{dev.name} did not boot: {exc}\n{console}") from exc

    # --- teardown -----------------------------------------------------------
    def close(self, log=lambda msg: None) -> None:
        t0 = time.monotonic()
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # nspawn: clean poweroff of the device
        deadline = time.monotonic() + 20
        for proc in reversed(self.processes):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.processes.clear()
        log(f"processes stopped in {time.monotonic() - t0:.1f}s")
        for ns in reversed(self.netns):
            sh(["ip", "netns", "delete", ns], check=False)
        self.netns.clear()
        # In parallel, and never across a mount point (a device root could still hold one).
        removers = [subprocess.Popen(["rm", "-rf", "--one-file-system", str(dev.rundir)])
                    for dev in self.devices.values() if dev.rundir.exists()]
        for proc in removers:
            proc.wait(timeout=600)
        log(f"namespaces and device roots removed, {time.monotonic() - t0:.1f}s in all")


RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
                   re.M)


def recap(output: str) -> Dict[str, Dict[str, int]]:
    """Parse PLAY RECAP lines of ansible-playbook into {host: {ok, changed, ...}}."""
    return {m.group(1): {"ok": int(m.group(2)), "changed": int(m.group(3)),
                         "unreachable": int(m.group(4)), "failed": int(m.group(5))}
            for m in RECAP.finditer(output)}
