"""Make docs/img/dashboard.png: the fleet page over a real agent, in headless Chromium.

    .venv/bin/python tools/dashboard_screenshot.py --out docs/img/dashboard.png

A Mosquitto on a free loopback port; the agent of examples/multi-camera.toml (the demo
clip and bundle, three cameras, overlays every second) as ``edge-01``; one more device,
``edge-02``, whose retained status is its last will (``offline``, ``connection lost``,
published by hand 5 minutes in the past: there is one real agent on this machine only);
``segedge-dashboard --operator``; a 1280x680 screenshot (256 colours) once every camera has shown an
overlay.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.publish as publish  # noqa: E402

from tests.agent.helpers import AgentProcess  # noqa: E402
from tests.helpers.cdp import Chromium  # noqa: E402
from tools.broker import Broker, free_port  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs/img/dashboard.png")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=680)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="segedge-dash-shot-"))
    broker = Broker(work / "mosquitto").start()
    config = tomllib.loads((ROOT / "examples/multi-camera.toml").read_text())
    config["mqtt"]["port"] = broker.port
    config["frames_in"]["enabled"] = False
    config["output"]["overlay_interval_s"] = 1.0
    config["output"]["stats_interval_s"] = 2.0
    for section in ("model",):
        config[section]["bundle"] = str(ROOT / config[section]["bundle"])
    for cam in config["cameras"]:
        cam["uri"] = str(ROOT / cam["uri"])
    agent = AgentProcess(work / "agent", config)
    publish.single("segedge/edge-02/status", json.dumps({
        "schema_version": 1, "device_id": "edge-02", "state": "offline",
        "reason": "connection lost", "ts": time.time() - 300, "session": "5e1f", "seq": 3,
        "connection": 1, "device": "GPU",
        "model": {"name": "pets-mobile", "version": "2.0.0", "precision": "FP16"}}),
        retain=True, hostname=broker.host, port=broker.port)
    port = free_port()
    dash = subprocess.Popen([sys.executable, "-m", "edge_agent.client.dashboard.server",
                             "--port", str(broker.port), "--listen", f"127.0.0.1:{port}",
                             "--operator"], cwd=str(ROOT))
    try:
        with Chromium(width=args.width, height=args.height) as browser:
            time.sleep(2)
            page = browser.page()
            page.navigate(f"http://127.0.0.1:{port}/")
            cams = [c["id"] for c in config["cameras"]]
            ready = " && ".join(
                f"document.querySelector('[data-id=\"{c}\"] img.overlay')?.naturalWidth > 0 && "
                f"!document.querySelector('[data-id=\"{c}\"]').innerText.includes('cap –')"
                for c in cams)
            if not page.wait_for(ready, 90):
                print(agent.log()[-3000:], file=sys.stderr)
                return 1
            time.sleep(2)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(args.out, args.width, args.height)
            from PIL import Image  # the dev extra: 256 colours keep the PNG small

            Image.open(args.out).convert("RGB").quantize(256).save(args.out, optimize=True)
            print(f"wrote {args.out}")
    finally:
        dash.terminate()
        dash.wait(10)
        agent.terminate()
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
