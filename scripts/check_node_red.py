"""Load examples/node-red-flow.json into a headless Node-RED and show it parses real
messages from a real agent (demo clip + bundle) through a real Mosquitto.

    (cd /some/dir && npm install node-red@4)
    PYTHONPATH=. .venv/bin/python scripts/check_node_red.py \
        --node-red /some/dir/node_modules/.bin/node-red

The flow goes in through Node-RED's admin API (POST /flows), its broker node is pointed
at the test broker; the flow's debug nodes log to Node-RED's console, which this script
reads. Passes (exit 0) when the coverage, health and stats nodes each printed a parsed
message for the agent's camera. Output is recorded in docs/integrations.md.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

from tools.broker import free_port
from tools.integrations_rig import ROOT, agent_config, running_agent, running_broker, wait_for

FLOW = ROOT / "examples" / "node-red-flow.json"
NODES = ("coverage", "health", "stats")


def post_flow(port: int, flow: List[dict]) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/flows", method="POST",
                                 data=json.dumps(flow).encode(),
                                 headers={"Content-Type": "application/json",
                                          "Node-RED-Deployment-Type": "full"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status


def seen(log: Path) -> Dict[str, List[str]]:
    """debug node name -> the messages it logged (Node-RED prints the object after a
    '[debug:<name>]' line)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    out: Dict[str, List[str]] = {}
    for name in NODES:
        found = re.findall(r"\[debug:" + name + r"\]\s*\n?(.*?)(?=\n\d+ \w+ \d\d:|\Z)",
                           text, re.S)
        if found:
            out[name] = [" ".join(m.split())[:300] for m in found]
    return out


def complete(got: Dict[str, List[str]]) -> bool:
    """Every node parsed a message of cam-01, and health saw it turn online."""
    return (len(got) == len(NODES) and all("cam-01" in v[0] for v in got.values())
            and any("state: 'online'" in v for v in got["health"]))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--node-red", required=True, help="path of the node-red executable")
    p.add_argument("--timeout", type=float, default=90.0)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="segedge-nodered-") as tmp:
        work = Path(tmp)
        with running_broker(work) as broker:
            flow = json.loads(FLOW.read_text())
            for node in flow:
                if node["type"] == "mqtt-broker":
                    node["broker"], node["port"] = broker.host, str(broker.port)
            port = free_port()
            log = work / "node-red.log"
            userdir = work / "userdir"
            userdir.mkdir()
            with log.open("wb") as out:
                red = subprocess.Popen([args.node_red, "-u", str(userdir), "-p", str(port)],
                                       stdout=out, stderr=subprocess.STDOUT)
            try:
                up = wait_for(lambda: "Started flows" in log.read_text(errors="replace")
                              or "Server now running" in log.read_text(errors="replace"), 60)
                if not up:
                    print("FAIL node-red did not start:\n" + log.read_text()[-2000:])
                    return 1
                status = post_flow(port, flow)
                print(f"node-red up on :{port}, POST /flows -> HTTP {status} "
                      f"({len(flow)} nodes)")
                t0 = time.monotonic()
                with running_agent(agent_config(broker.port), work):
                    wait_for(lambda: complete(seen(log)), args.timeout)
                    time.sleep(3.0)  # a few more messages, to show they keep coming
                got = seen(log)
                print(f"after {time.monotonic() - t0:.1f}s:")
                for name in NODES:
                    msgs = got.get(name, [])
                    print(f"  [debug:{name}] {len(msgs)} messages")
                    for m in msgs if name == "health" or len(msgs) < 3 else msgs[:1] + msgs[-1:]:
                        print(f"      {m}")
                ok = complete(got)
                print("PASS" if ok else "FAIL")
                if not ok:
                    print(log.read_text(errors="replace")[-3000:])
                    print((work / "agent.log").read_text(errors="replace")[-2000:])
                return 0 if ok else 1
            finally:
                red.terminate()
                try:
                    red.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    red.kill()


if __name__ == "__main__":
    sys.exit(main())
