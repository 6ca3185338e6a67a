"""The README demo and the reference subscriber CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.agent.helpers import ROOT, agent_config
from tests.conftest import require
from tools.broker import mosquitto_binary

pytestmark = pytest.mark.e2e


def test_demo_runs_and_summarises(tmp_path):
    require(mosquitto_binary() is not None, "mosquitto (apt-get install mosquitto)")
    out = tmp_path / "demo-out"
    res = subprocess.run([sys.executable, "-m", "edge_agent.demo", "--duration", "6",
                          "--out", str(out)], capture_output=True, text=True, cwd=str(ROOT),
                         timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "=== segedge demo summary ===" in res.stdout and "agent exit code 0" in res.stdout
    assert list((out / "masks").glob("*/overlay_*")), res.stdout
    assert "fps cap" in res.stdout  # the live stats line


def test_subscriber_cli_decodes_and_writes(broker, tiny_bundle, clip, unique_id, agents,
                                           tmp_path):
    agent = agents(agent_config(tiny_bundle, str(clip), broker.host, broker.port, unique_id,
                                output={"frame_every": 3, "mask_encoding": "rle"}))
    out = tmp_path / "sub"
    res = subprocess.run([sys.executable, "-m", "edge_agent.subscriber", "--port",
                          str(broker.port), "--device", unique_id, "--out", str(out),
                          "--duration", "5", "--quiet"], capture_output=True, text=True,
                         cwd=str(ROOT), timeout=60)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)[unique_id]
    assert summary["masks"] >= 10 and summary["bad"] == 0 and summary["state"] == "online"
    overlays = list((out / unique_id).glob("overlay_*.jpg"))
    assert overlays
    assert agent.terminate() == 0
