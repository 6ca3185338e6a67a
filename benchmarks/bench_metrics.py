"""CPU an agent spends per Prometheus scrape of ``[metrics]`` (issue 21).

    python benchmarks/bench_metrics.py [--cameras 4] [--scrapes 500] [--fps 5]

Runs the agent on the demo clip (``--cameras`` cameras, each at ``--fps``) against a
Mosquitto on a free loopback port, lets it settle, then measures the agent process's CPU
time (utime + stime from /proc) over two windows of the same length: one without
scrapes, one with ``--scrapes`` scrapes of /metrics back to back. CPU per scrape =
(scraped - quiet) / scrapes. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.broker import Broker, free_port  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cameras", type=int, default=4, help="cameras on the demo clip")
    p.add_argument("--fps", type=float, default=5.0, help="each camera's read rate")
    p.add_argument("--scrapes", type=int, default=500, help="scrapes in the measured window")
    p.add_argument("--settle", type=float, default=8.0, help="seconds before measuring")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    broker = Broker(work / "mosquitto").start()
    listen = free_port()
    cams = "".join(f'[[cameras]]\nid = "cam-{i}"\nuri = "{ROOT / "demo/clip.mp4"}"\n'
                   for i in range(args.cameras))
    (work / "agent.toml").write_text(
        f'device_id = "bench"\n[source]\nfps = {args.fps}\n[model]\nbundle = '
        f'"{ROOT / "demo/models/pets-mobile/3.2.0"}"\n[mqtt]\nport = {broker.port}\n'
        f'[metrics]\nlisten = "127.0.0.1:{listen}"\n{cams}')
    agent = subprocess.Popen([sys.executable, "-m", "edge_agent", "--config",
                              str(work / "agent.toml")], cwd=str(ROOT),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{listen}/metrics"
    try:
        time.sleep(args.settle)
        size = len(urllib.request.urlopen(url, timeout=5).read())
        t0, c0 = time.monotonic(), cpu_s(agent.pid)
        for _ in range(args.scrapes):
            urllib.request.urlopen(url, timeout=5).read()
        wall = time.monotonic() - t0
        scraped = cpu_s(agent.pid) - c0
        c1 = cpu_s(agent.pid)
        time.sleep(wall)
        quiet = cpu_s(agent.pid) - c1
    finally:
        agent.terminate()
        agent.wait(20)
        broker.stop()
    print(json.dumps({"cameras": args.cameras, "fps_per_camera": args.fps,
                      "scrapes": args.scrapes, "window_s": round(wall, 2),
                      "response_bytes": size, "agent_cpu_s_scraped": round(scraped, 3),
                      "agent_cpu_s_quiet": round(quiet, 3),
                      "cpu_ms_per_scrape": round(1000 * (scraped - quiet) / args.scrapes, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
