"""A real broker and a real agent on the demo clip, for the integration checks
(scripts/check_node_red.py, scripts/ha_live_check.py). Run from the repository root."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

from tools.broker import Broker

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "home-assistant.toml"


def agent_config(port: int, stats_interval_s: float = 2.0, frame_every: int = 0) -> str:
    """examples/home-assistant.toml pointed at ``port`` (paths stay relative to ROOT)."""
    text = EXAMPLE.read_text()
    text = re.sub(r"(?m)^port = \d+", f"port = {port}", text)
    text = re.sub(r"(?m)^stats_interval_s = [\d.]+", f"stats_interval_s = {stats_interval_s}",
                  text)
    return re.sub(r"(?m)^frame_every = \d+", f"frame_every = {frame_every}", text)


@contextmanager
def running_agent(config_text: str, work: Path) -> Iterator[subprocess.Popen]:
    """The agent as its own process (``python -m edge_agent``), stopped with SIGTERM."""
    cfg = work / "agent.toml"
    cfg.write_text(config_text)
    log = (work / "agent.log").open("wb")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "--config", str(cfg)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


@contextmanager
def running_broker(work: Path) -> Iterator[Broker]:
    broker = Broker(work / "mosquitto").start()
    try:
        yield broker
    finally:
        broker.stop()


def wait_for(check: Callable[[], Optional[object]], timeout: float, step: float = 0.5):
    """Poll ``check`` until it returns something truthy (returned) or time runs out (None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(step)
    return None
