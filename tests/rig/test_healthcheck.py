"""The deploy health gate's judgement on sample health files (no devices, fast).

The gate passes a release only when the unit's MainPID wrote the health file, the model
is this release's, the state is accepted, the agent is connected to its broker and has
published at least one mask (docs/deploy.md, the health file contract).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy/roles/segedge_agent/files/libexec/segedge-healthcheck"


def _load():
    loader = importlib.machinery.SourceFileLoader("segedge_healthcheck", str(SCRIPT))
    spec = importlib.util.spec_from_loader("segedge_healthcheck", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


hc = _load()
PROPS = {"ActiveState": "active", "SubState": "running", "MainPID": "4242", "NRestarts": "0"}
WANT = {"unit": "segedge-agent.service", "name": "tiny", "version": "0.0.1",
        "states": ["online"], "require_delivery": True}


def health(**over):
    base = {"state": "online", "ts": 1.0, "reason": None, "pid": 4242, "device": "CPU",
            "model": {"name": "tiny", "version": "0.0.1", "precision": "FP32"},
            "mqtt": {"connected": True, "broker": "10.0.0.1:8883", "reason": None},
            "masks_published": 3, "components": {}}
    base.update(over)
    return base


def test_a_delivering_agent_of_this_release_passes():
    assert hc.judge(PROPS, health(), 0, WANT) == (hc.HEALTHY, "healthy")


@pytest.mark.parametrize("sample, words", [
    (health(mqtt={"connected": False, "broker": "10.0.0.9:8883",
                  "reason": "connection refused"}), "not connected to the broker 10.0.0.9"),
    (health(masks_published=0), "no mask published yet"),
    (health(masks_published=None), "no mask published yet"),
    (health(masks_published=True), "no mask published yet"),
    ({k: v for k, v in health().items() if k not in ("mqtt", "masks_published")},
     "says nothing about the broker"),
    (health(mqtt="yes"), "says nothing about the broker"),
    (health(mqtt={"connected": "true"}), "not connected"),
    (health(pid=1), "from pid 1"),
    (health(model={"name": "tiny", "version": "0.0.0"}), "expected tiny 0.0.1"),
    (health(state="degraded", reason="mqtt: not authorised"), "'degraded'"),
    (None, "no health file"),
])
def test_anything_short_of_delivering_waits_with_a_reason(sample, words):
    verdict, why = hc.judge(PROPS, sample, 0, WANT)
    assert verdict == hc.WAIT and words in why, why


def test_old_agents_pass_only_when_delivery_is_not_required():
    old = {k: v for k, v in health().items() if k not in ("mqtt", "masks_published")}
    assert hc.judge(PROPS, old, 0, dict(WANT, require_delivery=False))[0] == hc.HEALTHY


def test_a_failed_or_crash_looping_unit_fails_at_once():
    assert hc.judge(dict(PROPS, ActiveState="failed"), health(), 0, WANT)[0] == hc.FAIL
    assert hc.judge(PROPS, health(), 2, WANT)[0] == hc.FAIL
    assert hc.judge(dict(PROPS, ActiveState="activating"), health(), 0, WANT)[0] == hc.WAIT


def test_cli_times_out_on_a_disconnected_agent(tmp_path, monkeypatch):
    """The script end to end, with systemctl answered by a stand-in on PATH."""
    path = tmp_path / "health.json"
    path.write_text(json.dumps(health(mqtt={"connected": False, "broker": "10.0.0.9:8883",
                                            "reason": "TLS: certificate verify failed"})))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "systemctl"
    fake.write_text("#!/bin/sh\nprintf 'ActiveState=active\\nSubState=running\\nMainPID=4242\\n"
                    "NRestarts=0\\n'\n")
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    argv = [sys.executable, str(SCRIPT), "--unit", "u", "--health-file", str(path),
            "--name", "tiny", "--version", "0.0.1", "--timeout", "1"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 1 and "TLS: certificate verify failed" in proc.stdout, proc.stdout
    path.write_text(json.dumps(health()))
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 0 and json.loads(proc.stdout)["healthy"] is True, proc.stdout


def test_the_health_file_is_read_bounded_and_never_through_a_link(tmp_path):
    """The agent's user writes the state folder; the root helper reading it must not follow
    a link (to a secret or /dev/zero), block on a FIFO, or load a huge file."""
    import os

    hc = _load()
    good = tmp_path / "health.json"
    good.write_text(json.dumps({"state": "online"}))
    assert hc.read_health(str(good)) == {"state": "online"}
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"state": "online", "token": "s3cret"}))
    link = tmp_path / "link.json"
    link.symlink_to(secret)
    assert hc.read_health(str(link)) is None
    zero = tmp_path / "zero.json"
    zero.symlink_to("/dev/zero")
    assert hc.read_health(str(zero)) is None
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    assert hc.read_health(str(fifo)) is None  # returns at once: no writer is waited for
    huge = tmp_path / "huge.json"
    huge.write_text('{"state": "online", "pad": "' + "x" * (hc.MAX_HEALTH_BYTES + 10) + '"}')
    assert hc.read_health(str(huge)) is None
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    assert hc.read_health(str(deep)) is None
