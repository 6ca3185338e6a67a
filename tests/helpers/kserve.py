"""The real KServe v2 server of the tests: tools/kserve_server.py (Triton from PyPI's
nvidia-pytriton, running the repository's IR with OpenVINO) in its own venv, made by
scripts/setup_model_server.sh; started in its own process group so that killing it
kills Triton and its model stubs too."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Optional

from tests.agent.helpers import ROOT

SETUP = ROOT / "scripts" / "setup_model_server.sh"


def server_python() -> Optional[str]:
    """The server venv's python (made if missing; None when it cannot be made)."""
    try:
        done = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True,
                              timeout=900, cwd=str(ROOT))
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[-1] if done.returncode == 0 and lines else None


class KServeServer:
    def __init__(self, python: str, repository: Path, http_port: int, grpc_port: int,
                 metrics_port: int, log: Path) -> None:
        self.python, self.repository, self.log = python, repository, log
        self.ports = (http_port, grpc_port, metrics_port)
        self.url = f"http://127.0.0.1:{http_port}"
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 90.0, attempts: int = 3) -> KServeServer:
        """Start and wait for every model's newest version; a start that fails (pytriton
        gives up now and then on a loaded box, e.g. while the port's last connections
        drain) is retried, its log kept in the same file."""
        for attempt in range(attempts):
            try:
                return self._start_once(timeout)
            except RuntimeError:
                self.kill()
                if attempt == attempts - 1:
                    raise
                with open(self.log, "a") as out:
                    out.write(f"--- start attempt {attempt + 1} failed; retrying ---\n")
                time.sleep(2.0)
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> KServeServer:
        http, grpc, metrics = self.ports
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [self.python, str(ROOT / "tools" / "kserve_server.py"), str(self.repository),
                 "--http-port", str(http), "--grpc-port", str(grpc),
                 "--metrics-port", str(metrics)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=str(ROOT))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"model server exited: {self.log.read_text()[-2000:]}")
            newest: dict = {}
            for v in self.repository.glob("*/[0-9]*"):
                newest[v.parent.name] = max(newest.get(v.parent.name, 0), int(v.name))
            versions = [f"/v2/models/{m}/versions/{n}/ready" for m, n in newest.items()]
            if all(self.get(path) is not None for path in ["/v2/health/ready", *versions]):
                return self
            time.sleep(0.3)
        self.kill()
        raise RuntimeError(f"model server not ready in {timeout}s: {self.log.read_text()[-2000:]}")

    def get(self, path: str) -> Optional[dict]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as resp:
                body = resp.read()
                return json.loads(body) if body else {}
        except (OSError, ValueError):
            return None

    def inferences(self, model: str, version: int) -> int:
        """Triton's own count of that version's inferences (its Prometheus metrics)."""
        url = f"http://127.0.0.1:{self.ports[2]}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return -1
        found = re.search(rf'^nv_inference_count{{model="{re.escape(model)}",'
                          rf'version="{version}"}} (\d+)', text, re.M)
        return int(found.group(1)) if found else 0

    def ensure(self) -> KServeServer:
        """Running and ready (a test before may have left it dead): restarted if not."""
        if self.proc is None or self.proc.poll() is not None \
                or self.get("/v2/health/ready") is None:
            self.kill()
            self.start()
        return self

    def triton_pid(self) -> int:
        """The tritonserver process of the group (the one that speaks HTTP)."""
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            if name == "tritonserver" and int(stat.rsplit(")", 1)[1].split()[2]) == \
                    self.proc.pid:
                return int(entry)
        raise RuntimeError("no tritonserver process in the server's group")

    def kill(self) -> None:
        """SIGKILL to the whole group (the Python parent, tritonserver, the model stubs)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None
