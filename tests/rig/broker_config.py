"""The segedge_broker role's own files, rendered on this machine for a local Mosquitto.

The broker tests and the fleet benchmark run Mosquitto with exactly what the role
writes (its templates, its defaults, its filter plugin and its PKI helper); only what
ties the file to a dedicated host is adapted: the listener binds 127.0.0.1, the pid file
and persistence live in the run directory, and the broker keeps running as root.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional

import jinja2
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "deploy/roles/segedge_broker"


def _load(path: Path, name: str) -> ModuleType:
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def pki_module() -> ModuleType:
    return _load(ROLE / "files/segedge-pki", "segedge_pki")


def filters_module() -> ModuleType:
    return _load(ROLE / "filter_plugins/segedge_mosquitto.py", "segedge_mosquitto")


@dataclass
class LocalBroker:
    """A rendered configuration (``conf``) and, once started, the Mosquitto process."""

    workdir: Path
    port: int
    auth: str
    devices: List[str]
    subscribers: List[str] = field(default_factory=list)
    operators: List[str] = field(default_factory=list)
    passwords: Dict[str, str] = field(default_factory=dict)
    overrides: Dict[str, object] = field(default_factory=dict)
    # device id -> its camera ids (segedge_agent_cameras), -> its frames-in senders
    cameras: Dict[str, List[str]] = field(default_factory=dict)
    senders: Dict[str, List[str]] = field(default_factory=dict)
    # lines appended to the rendered mosquitto.conf (e.g. "log_type debug": Mosquitto logs
    # a denied PUBLISH only at debug level)
    extra_conf: List[str] = field(default_factory=list)
    # Sites, bridged: a central broker's bridges (segedge_broker__bridges) or a site
    # broker's uplink (segedge_broker__uplink, with "address" host:port of the central),
    # as the filter plugin's segedge_sites plans them (site_plan below); brokers of one
    # fleet share one kit CA (pki_dir).
    bridges: List[Dict[str, object]] = field(default_factory=list)
    uplink: Dict[str, object] = field(default_factory=dict)
    pki_dir: Optional[Path] = None
    name: str = "broker"
    proc: Optional[subprocess.Popen] = None

    @property
    def pki(self) -> Path:
        return self.pki_dir or self.workdir / "pki"

    @property
    def conf(self) -> Path:
        return self.workdir / "etc" / "mosquitto.conf"

    @property
    def log(self) -> Path:
        return self.workdir / "mosquitto.log"

    @property
    def fleet(self) -> List[Dict[str, object]]:
        """``segedge_broker__fleet`` as tasks/preflight.yml gathers it (host = device id)."""
        return [{"host": d, "id": d, "cameras": list(self.cameras.get(d, [])),
                 "senders": list(self.senders.get(d, []))} for d in self.devices]

    @property
    def sender_ids(self) -> List[str]:
        return [s for d in self.devices for s in self.senders.get(d, [])]

    def render(self) -> Path:
        etc = self.workdir / "etc"
        etc.mkdir(parents=True, exist_ok=True)
        (self.workdir / "data").mkdir(exist_ok=True)
        bridge_names = [str(b["name"]) for b in self.bridges] + (
            [str(self.uplink["name"])] if self.uplink else [])
        identities = (self.devices + self.subscribers + self.operators + self.sender_ids
                      + bridge_names)
        pki = pki_module()
        pki.ensure(self.pki, self.name, ["IP:127.0.0.1", "DNS:localhost"],
                   identities if self.auth == "certificate" else [], 30, 1, False)
        shutil.copy(self.pki / "ca.crt", etc / "ca.crt")
        shutil.copy(self.pki / f"servers/{self.name}.crt", etc / "server.crt")
        shutil.copy(self.pki / f"servers/{self.name}.key", etc / "server.key")
        if self.uplink:
            shutil.copy(self.pki / "ca.crt", etc / "bridge-ca.crt")
            if self.auth == "certificate":
                shutil.copy(self.pki / f"clients/{self.uplink['name']}.crt", etc / "bridge.crt")
                shutil.copy(self.pki / f"clients/{self.uplink['name']}.key", etc / "bridge.key")
        shutil.copy(self.pki / "crl.pem", etc / "crl.pem")
        defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(ROLE / "templates")),
                                 keep_trailing_newline=True, trim_blocks=True,
                                 undefined=jinja2.StrictUndefined)
        env.filters["comment"] = lambda text: "\n".join("# " + line
                                                        for line in str(text).splitlines())
        env.filters["bool"] = bool
        env.filters.update(filters_module().FilterModule().filters())  # mosquitto_pbkdf2, ...
        values = {k: v for k, v in defaults.items() if "{{" not in str(v)}
        values.update({"ansible_managed": "rendered by tests/rig/broker_config.py",
                       "segedge_broker_auth": self.auth,
                       "segedge_broker_tls_port": self.port,
                       "segedge_broker_config_dir": str(etc),
                       "segedge_broker_subscribers": self.subscribers,
                       "segedge_broker_operators": self.operators,
                       "segedge_broker__devices": self.devices,
                       "segedge_broker__fleet": self.fleet,
                       "segedge_broker__passwords": self.passwords,
                       "segedge_broker__bridges": self.bridges,
                       "segedge_broker__uplink": self.uplink, "hostvars": {}})
        if self.uplink:
            values["segedge_broker_bridge_address"], _, port = str(
                self.uplink["address"]).rpartition(":")
            values["segedge_broker_bridge_port"] = int(port)
        values.update(self.overrides)
        for name in ("passwd", "acl"):
            (etc / name).write_text(env.get_template(f"{name}.j2").render(values))
        conf = env.get_template("mosquitto.conf.j2").render(values)
        conf = re.sub(r"^pid_file .*$", "", conf, flags=re.M)
        conf = re.sub(r"^persistence_location .*$", f"persistence_location {self.workdir}/data/",
                      conf, flags=re.M)
        conf = re.sub(rf"^listener {self.port}$", f"listener {self.port} 127.0.0.1", conf,
                      flags=re.M)
        conf = conf.replace("log_dest stderr", f"log_dest file {self.log}")
        self.conf.write_text(conf + "\n# local run\nuser root\n"
                             + "".join(f"{line}\n" for line in self.extra_conf))
        return self.conf

    def start(self, timeout: float = 15.0) -> LocalBroker:
        self.render()
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        import socket

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited {self.proc.returncode}: "
                                   f"{self.proc.stderr.read().decode(errors='replace')}\n"
                                   f"{self.log.read_text() if self.log.exists() else ''}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"mosquitto not listening on {self.port}")

    def restart(self) -> None:
        """Render again (new certificates, CRL) and start a new process on the same port."""
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill(self) -> None:
        """``kill -9`` (an OOM kill, a power cut of the process): nothing is saved on the way."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def identity_files(self, name: str) -> Dict[str, str]:
        return {"ca": str(self.pki / "ca.crt"),
                **({"cert": str(self.pki / f"clients/{name}.crt"),
                    "key": str(self.pki / f"clients/{name}.key")}
                   if self.auth == "certificate" else
                   {"user": name, "password": self.passwords.get(name, "")})}


def site_plan(fleet: List[Dict[str, object]], site_of: Dict[str, str],
              brokers: List[Dict[str, str]], me: str) -> Dict[str, object]:
    """The role's own ``segedge_sites`` filter (what tasks/preflight.yml computes)."""
    return filters_module().segedge_sites(fleet, site_of, brokers, me)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
