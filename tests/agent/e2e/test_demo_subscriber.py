"""The README demo and the reference subscriber CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.agent.helpers import ROOT, agent_config
from tests.conftest import require
from tools.broker import free_port, mosquitto_binary

pytestmark = pytest.mark.e2e


def run_demo(out, *extra: str) -> subprocess.CompletedProcess:
    tmp = out.parent / "tmp"  # the demo's own temporary folder goes here, and must go
    tmp.mkdir(parents=True)
    res = subprocess.run([sys.executable, "-m", "tools.demo", "--duration", "6", "--out",
                          str(out), *extra], capture_output=True, text=True, cwd=str(ROOT),
                         timeout=90, env={**os.environ, "TMPDIR": str(tmp)})
    assert not list(tmp.iterdir()), res.stdout
    return res


def check_demo(res: subprocess.CompletedProcess, out, broker: str) -> None:
    assert res.returncode == 0, res.stdout + res.stderr
    assert "=== segedge demo summary ===" in res.stdout and "agent exit code 0" in res.stdout
    assert f"broker: {broker}" in res.stdout, res.stdout
    received = re.search(r"received: (\d+) masks .*, (\d+) undecodable", res.stdout)
    assert received and int(received.group(1)) > 0 and received.group(2) == "0", res.stdout
    masks = sorted((out / "masks" / "demo-cam").glob("mask_*.png"))
    assert masks and list((out / "masks").glob("*/overlay_*.jpg")), res.stdout
    with Image.open(masks[0]) as png:  # viewable: a palette PNG whose values are classes
        assert png.mode == "P" and set(np.unique(np.asarray(png))) <= {0, 1}
    assert "fps cap" in res.stdout  # the live stats line


def test_demo_runs_and_summarises(tmp_path):
    require(mosquitto_binary() is not None, "mosquitto (apt-get install mosquitto)")
    check_demo(run_demo(tmp_path / "out"), tmp_path / "out", "Mosquitto")


def test_demo_with_embedded_broker(tmp_path):
    out = tmp_path / "out"
    check_demo(run_demo(out, "--embedded-broker"), out, "embedded broker (tools/mqtt_broker.py")


def test_demo_with_existing_broker(broker, tmp_path):
    out = tmp_path / "out"
    check_demo(run_demo(out, "--broker", f"{broker.host}:{broker.port}"), out,
               f"existing broker (--broker) on {broker.host}:{broker.port}, MQTT 5")


def test_demo_gives_up_in_one_line_on_an_unreachable_broker(tmp_path):
    res = run_demo(tmp_path / "out", "--broker", f"127.0.0.1:{free_port()}")
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "cannot connect" in res.stderr.strip().splitlines()[-1], res.stderr


def test_subscriber_cli_decodes_and_writes(broker, tiny_bundle, clip, unique_id, agents,
                                           tmp_path):
    agent = agents(agent_config(tiny_bundle, str(clip), broker.host, broker.port, unique_id,
                                output={"frame_every": 3, "mask_encoding": "rle"}))
    out = tmp_path / "sub"
    res = subprocess.run([sys.executable, "-m", "edge_agent.client.subscriber", "--port",
                          str(broker.port), "--device", unique_id, "--out", str(out),
                          "--duration", "5", "--quiet"], capture_output=True, text=True,
                         cwd=str(ROOT), timeout=60)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)[unique_id]
    assert summary["masks"] >= 10 and summary["bad"] == 0 and summary["state"] == "online"
    overlays = list((out / unique_id).glob("overlay_*.jpg"))
    assert overlays
    assert agent.terminate() == 0
