"""Debian device roots for the rig, built once with mmdebstrap and cached.

A root is keyed by a hash of its suite and package list, so changing the list
builds a new one; each test session copies the pristine root (never boots it).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("SEGEDGE_RIG_CACHE", REPO / ".rig" / "cache"))

BASE = ["systemd", "systemd-sysv", "dbus", "udev", "python3", "python3-venv",
        "python3-packaging", "python3-apt", "openssh-server", "iproute2"]
# What the role's per-target package tasks install: present in the root because the
# devices have no route to a Debian mirror (apt then has nothing to do, as on a
# fleet with pre-seeded images or a local mirror).
SUITES = {
    # cpu, gpu and npu lanes: bookworm, Python 3.11; iGPU compute runtime from Debian main;
    # the broker host: mosquitto (disabled in the pristine root, the broker role enables it)
    "bookworm": BASE + ["intel-opencl-icd", "libze1", "ocl-icd-libopencl1", "mosquitto"],
    # myriad lane: bullseye, Python 3.9 (newest for OpenVINO 2022.3 wheels), libusb
    "bullseye": BASE + ["libusb-1.0-0"],
}


def root_key(suite: str) -> str:
    text = "\n".join(["minbase", suite, *sorted(SUITES[suite])])
    return f"{suite}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def build_with_retries(cmd: list[str], tmp: Path, log=print, attempts: int = 3,
                       pause_s: float = 20.0, run=subprocess.run) -> None:
    """Run mmdebstrap, again after a pause when it fails (a Debian mirror has bad minutes).

    The first try is quiet; later tries are verbose, so a failure that stays shows what
    apt said, not only that ``apt-get update`` failed.
    """
    for attempt in range(1, attempts + 1):
        shutil.rmtree(tmp, ignore_errors=True)
        args = cmd[:1] + (["--quiet"] if attempt == 1 else ["--verbose"]) + cmd[1:]
        proc = run(args, capture_output=True, text=True, timeout=900)
        if proc.returncode == 0:
            return
        shutil.rmtree(tmp, ignore_errors=True)
        tail = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        if attempt == attempts:
            raise RuntimeError(f"mmdebstrap {cmd[-2]} failed {attempts} times "
                               f"(last exit {proc.returncode}):\n{tail}")
        log(f"rig: mmdebstrap {cmd[-2]} failed (exit {proc.returncode}, try {attempt} of "
            f"{attempts}); again in {pause_s * attempt:.0f}s: {proc.stderr.strip()[-300:]}")
        time.sleep(pause_s * attempt)


def ensure_root(suite: str, log=print) -> Path:
    """Return the cached pristine root for ``suite``, building it if needed."""
    target = CACHE / "roots" / root_key(suite)
    if (target / ".complete").exists():
        return target
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    cmd = ["mmdebstrap", "--variant=minbase",
           "--include=" + ",".join(SUITES[suite]),
           # a mirror that drops a connection mid-update is retried by apt itself first
           "--aptopt=Acquire::Retries=5",
           # no docs/man pages/locales: smaller, faster copies
           "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/doc/*",
           "--dpkgopt=path-exclude=/usr/share/locale/*",
           suite, str(tmp)]
    build_with_retries(cmd, tmp, log)
    # Package postinsts enable their services: a device runs only what the roles enable.
    for wants in (tmp / "etc/systemd/system/multi-user.target.wants").glob("mosquitto.service"):
        wants.unlink()
    (tmp / ".complete").write_text(f"built in {time.monotonic() - t0:.1f}s\n")
    if target.exists():  # another session won the race
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.rename(tmp, target)
    log(f"rig: built {suite} root in {time.monotonic() - t0:.1f}s -> {target}")
    return target


if __name__ == "__main__":
    for s in sys.argv[1:] or list(SUITES):
        print(ensure_root(s))
