"""The demo's stop (issue 21): a Ctrl-C says it was stopped and ends cleanly (the agent
offline with reason shutdown, not a lost connection), the summary's counts are the
agent's final stats, and a broker the demo did not start keeps nothing retained."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.agent.e2e.test_demo_subscriber import run_demo
from tests.agent.e2e.test_tls_auth import tls_broker  # noqa: F401 - fixture
from tests.agent.helpers import ROOT, wait_until
from tests.conftest import require
from tools.broker import mosquitto_binary

pytestmark = pytest.mark.e2e


def counts(stdout: str):
    """(masks received, masks the agent's stats say it published, stats label)."""
    received = re.search(r"^received: (\d+) masks", stdout, re.M)
    stats = re.search(r"^agent's (\w+) stats .* (\d+) published on", stdout, re.M)
    assert received and stats, stdout
    return int(received.group(1)), int(stats.group(2)), stats.group(1)


def test_ctrl_c_says_stopped_and_counts_from_the_final_stats(tmp_path):
    require(mosquitto_binary() is not None, "mosquitto (apt-get install mosquitto)")
    out = tmp_path / "out"
    # a terminal's Ctrl-C: SIGINT to the whole foreground process group
    proc = subprocess.Popen([sys.executable, "-m", "tools.demo", "--duration", "0", "--out",
                             str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=str(ROOT), start_new_session=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        assert wait_until(lambda: sum("fps cap" in x for x in lines) >= 2, 60), "".join(lines)
        time.sleep(1.3)  # between two stats ticks (2 s): the last tick's counts are stale
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    reader.join(10)
    text = "".join(lines)
    assert "demo: stopped (Ctrl-C)" in text and "stopped by Ctrl-C after" in text, text
    assert "demo-cam: status offline (shutdown)" in text, text
    assert "connection lost" not in text and "agent exit code 0" in text, text
    received, published, label = counts(text)
    assert label == "final" and 0 < received <= published <= received + 2, text


def test_existing_broker_keeps_nothing_retained(broker, tmp_path):
    res = run_demo(tmp_path / "out", "--broker", f"{broker.host}:{broker.port}")
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"demo: removed [1-9]\d* retained message\(s\) of demo-cam", res.stdout), \
        res.stdout
    left = []
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, msg: left.append(msg.topic) if msg.retain else None
    client.on_connect = lambda c, *a: c.subscribe("segedge/demo-cam/#", qos=1)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        time.sleep(1.5)
    finally:
        client.disconnect()
        client.loop_stop()
    assert left == [], left


def test_existing_broker_that_refuses_the_subscriber_is_one_line(tls_broker, tmp_path):  # noqa: F811
    """--broker on a port that takes TCP but not an anonymous plain MQTT client (TLS)."""
    res = run_demo(tmp_path / "out", "--broker", f"127.0.0.1:{tls_broker.port}")
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith(
        f"demo: subscriber: broker 127.0.0.1:{tls_broker.port}: "), res.stderr
