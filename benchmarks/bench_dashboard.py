"""segedge-dashboard under a simulated fleet: its CPU and memory (a benchmark).

    python benchmarks/bench_dashboard.py --agents 50 --cameras 4 --duration 60 \
        --out runs/bench/dashboard.json

Mosquitto runs on loopback (plain MQTT, anonymous: tools/broker.py). Each simulated agent
has ``--cameras`` cameras; every camera publishes what a camera of a real agent does at
the fleet benchmark's rates (benchmarks/bench_broker.py): a mask 10 times a second (its
PNG mask message), a stats message every 5 s, a retained status; plus an overlay JPEG
(docs/img/overlay.jpg, 61 KB) every ``--overlay-interval`` seconds; every agent publishes
its own status and stats with ``cameras``. The dashboard runs as its own process
(``python -m edge_agent.client.dashboard.server``) with one page open: a client reading
``/events`` that fetches the overlays of the first 12 cards when they change (what a
screen shows). The dashboard's CPU time and RSS are read from /proc once a second; the
window starts after ``--warmup`` s. With ``--hostile`` a second phase then sends, for
``--hostile-duration`` s, statuses and 400 KB overlays for 5,000 new ids, 1 MB messages
and garbage, and the dashboard's RSS is reported after it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tools.broker import Broker, free_port  # noqa: E402

OVERLAY = ROOT / "docs" / "img" / "overlay.jpg"
TICK_HZ = 10.0


def proc_sample(pid: int) -> Dict[str, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    rss_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return {"cpu_s": (int(fields[11]) + int(fields[12])) / ticks,
            "rss_mb": rss_pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)}


def camera_stats(cam: str, agent: str, seq: int) -> bytes:
    return json.dumps({
        "schema_version": 1, "device_id": cam, "agent_id": agent, "ts": time.time(),
        "uptime_s": seq / TICK_HZ, "interval_s": 5.0,
        "fps": {"capture": 15.0, "inference": 15.0, "publish": 10.0},
        "latency_ms": {"p50": 18.2, "p95": 24.0, "p99": 31.5, "count": 50},
        "frames": {"captured": seq, "inferred": seq, "dropped": 0, "stale": 0, "published": seq,
                   "skipped_rate": 0, "mqtt_dropped": 0, "spool_dropped": 0, "errors": 0},
        "queues": {"capture": 0, "inflight": 1, "reorder": 0, "mqtt_outbound": 0,
                   "mqtt_spool": 0},
        "device": "CPU", "precision": "INT8", "inference_precision": "bf16", "num_requests": 2,
        "model": {"name": "pets-mobile", "version": "2.0.0", "precision": "INT8"},
        "process": {"rss_bytes": 180 << 20, "cpu_percent": 80.0, "threads": 12},
        "state": "online", "session": "s-" + cam, "seq": seq}).encode()


def status(dev: str, agent: str, cameras: List[str]) -> bytes:
    body = {"schema_version": 1, "device_id": dev, "state": "online", "ts": time.time(),
            "agent_version": "0.1.0", "reason": None, "device": "CPU", "device_errors": {},
            "model": {"name": "pets-mobile", "version": "2.0.0", "precision": "INT8"},
            "runtime": "2026.4.1", "pid": 4242, "session": "s-" + dev, "seq": 1,
            "connection": 1}
    if dev == agent:
        body["cameras"] = dict.fromkeys(cameras, "online")
    else:
        body["agent_id"] = agent
    return json.dumps(body).encode()


def publisher(args, agents: List[str], port: int, start_at: float, out: mp.Queue) -> None:
    """One process drives several agents on a shared 10 Hz clock (one paho client each)."""
    import paho.mqtt.client as mqtt
    from bench_broker import mask_payload
    from paho.mqtt.enums import CallbackAPIVersion

    overlay = OVERLAY.read_bytes()
    masks = [mask_payload("x", i) for i in range(30)]
    clients = {}
    cams = {a: [f"{a}-c{j}" for j in range(args.cameras)] for a in agents}
    for a in agents:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-{a}", protocol=mqtt.MQTTv5)
        c.max_queued_messages_set(0)
        c.connect("127.0.0.1", port, keepalive=30)
        c.loop_start()
        clients[a] = c
    sent = {"mask": 0, "stats": 0, "overlay": 0, "status": 0}
    while time.time() < start_at:
        time.sleep(0.05)
    for a in agents:
        for dev in [a, *cams[a]]:
            clients[a].publish(f"segedge/{dev}/status", status(dev, a, cams[a]), 1, retain=True)
            sent["status"] += 1
    stats_every = int(TICK_HZ * 5.0)
    overlay_every = max(1, int(TICK_HZ * args.overlay_interval))
    tick, seq, next_t = 1.0 / TICK_HZ, 0, time.monotonic()
    t_end = start_at + args.warmup + args.duration
    while time.time() < t_end:
        seq += 1
        for i, a in enumerate(agents):
            c = clients[a]
            for j, cam in enumerate(cams[a]):
                if not args.no_masks:
                    c.publish(f"segedge/{cam}/mask", masks[seq % len(masks)], 0)
                    sent["mask"] += 1
                phase = seq + i * 7 + j * 3  # spread the slower streams over the ticks
                if phase % overlay_every == 0:
                    c.publish(f"segedge/{cam}/overlay", overlay, 0)
                    sent["overlay"] += 1
                if phase % stats_every == 0:
                    c.publish(f"segedge/{cam}/stats", camera_stats(cam, a, seq), 1)
                    sent["stats"] += 1
            if (seq + i) % stats_every == 0:
                c.publish(f"segedge/{a}/stats", camera_stats(a, a, seq), 1)
                sent["stats"] += 1
        next_t += tick
        time.sleep(max(0.0, next_t - time.monotonic()))
    behind = max(0.0, time.monotonic() - next_t)
    time.sleep(1.0)
    for c in clients.values():
        c.disconnect()
        c.loop_stop()
    out.put({"sent": sent, "behind_s": behind})


def hostile(port: int, seconds: float) -> Dict[str, int]:
    """Ids beyond the cap, oversized messages and garbage, as fast as one client goes."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="hostile", protocol=mqtt.MQTTv5)
    c.max_queued_messages_set(200)
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    big_overlay = b"\xff\xd8" + os.urandom(400 << 10)
    huge = b"{" + b" " * (1 << 20) + b"}"
    sent, i, end = 0, 0, time.monotonic() + seconds
    while time.monotonic() < end:
        dev = f"intruder-{i % 5000}"
        c.publish(f"segedge/{dev}/status", b'{"state":"online","reason":"' + b"x" * 900 + b'"}')
        c.publish(f"segedge/{dev}/overlay", big_overlay)
        c.publish(f"segedge/{dev}/stats", huge)
        c.publish(f"segedge/{dev}/stats", b"\x00garbage")
        sent, i = sent + 4, i + 1
        time.sleep(0.004)
    c.disconnect()
    c.loop_stop()
    return {"messages": sent, "ids": min(i, 5000)}


class Page(threading.Thread):
    """One open page: the event stream, and the overlays of the first cards it shows."""

    def __init__(self, url: str, shown: int = 12) -> None:
        super().__init__(daemon=True)
        self.url, self.shown = url, shown
        self.batches = self.cards = self.overlays = self.overlay_bytes = 0
        self.versions: Dict[str, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        with urllib.request.urlopen(self.url + "events", timeout=30) as stream:
            while not self.stop.is_set():
                line = stream.readline()
                if not line:
                    return
                if not line.startswith(b"data: "):
                    continue
                data = json.loads(line[6:])
                self.batches += 1
                self.cards += len(data["cards"])
                for card in data["cards"]:
                    cid = card["id"]
                    shown = cid in self.versions or len(self.versions) < self.shown
                    if shown and card["overlay"] and self.versions.get(cid) != card["overlay"]:
                        self.versions[cid] = card["overlay"]
                        with urllib.request.urlopen(f"{self.url}overlay/{cid}.jpg") as r:
                            self.overlay_bytes += len(r.read())
                        self.overlays += 1


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--agents", type=int, default=50)
    p.add_argument("--cameras", type=int, default=4)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=10.0)
    p.add_argument("--overlay-interval", type=float, default=1.0)
    p.add_argument("--no-masks", action="store_true", help="leave the masks out (the "
                   "dashboard does not subscribe to them; they load the broker only)")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--hostile", action="store_true")
    p.add_argument("--hostile-duration", type=float, default=20.0)
    p.add_argument("--out", type=Path, default=ROOT / "runs/bench/dashboard.json")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="segedge-bench-dash-"))
    broker = Broker(work / "mosquitto", extra_config=["max_queued_messages 10000"]).start()
    http_port = free_port()
    dash = subprocess.Popen([sys.executable, "-m", "edge_agent.client.dashboard.server",
                             "--port", str(broker.port), "--listen", f"127.0.0.1:{http_port}"],
                            cwd=str(ROOT), stdout=subprocess.PIPE, text=True)
    assert dash.stdout is not None and "http://" in dash.stdout.readline()
    url = f"http://127.0.0.1:{http_port}/"
    page = Page(url)
    page.start()
    idle = proc_sample(dash.pid)
    agents = [f"edge-{i:03d}" for i in range(args.agents)]
    start_at = time.time() + 3.0 + args.agents * 0.02
    queue: mp.Queue = mp.Queue()
    procs = [mp.Process(target=publisher, args=(args, agents[i::args.processes], broker.port,
                                                start_at, queue))
             for i in range(args.processes)]
    for proc in procs:
        proc.start()
    samples = []
    while any(proc.is_alive() for proc in procs) and queue.qsize() < len(procs):
        samples.append({"t": time.time() - start_at, **proc_sample(dash.pid)})
        time.sleep(1.0)
    results = [queue.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(30)
    with urllib.request.urlopen(url + "api/fleet") as r:
        fleet = json.load(r)
    window = [s for s in samples if args.warmup <= s["t"] <= args.warmup + args.duration]
    cpu = (window[-1]["cpu_s"] - window[0]["cpu_s"]) / (window[-1]["t"] - window[0]["t"])
    sent = {k: sum(r["sent"][k] for r in results) for k in results[0]["sent"]}
    report = {
        "what": "segedge-dashboard (own process) following a simulated fleet over a loopback "
                "Mosquitto (plain MQTT), one page open",
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                 "loadavg_at_end": os.getloadavg()},
        "agents": args.agents, "cameras_per_agent": args.cameras,
        "ids": args.agents * (args.cameras + 1), "duration_s": args.duration,
        "rates_per_camera": {"mask_hz": 0 if args.no_masks else TICK_HZ,
                             "overlay_hz": 1 / args.overlay_interval, "stats_hz": 0.2},
        "overlay_bytes": OVERLAY.stat().st_size,
        "sent": sent, "dashboard_received": fleet["meta"]["received"],
        "dashboard_dropped": fleet["meta"]["dropped"],
        "cards": len(fleet["cards"]),
        "cards_online": sum(1 for c in fleet["cards"] if c["state"] == "online"),
        "dashboard_cpu_percent_of_one_core": round(100 * cpu, 1),
        "dashboard_rss_mb_idle": round(idle["rss_mb"], 1),
        "dashboard_rss_mb_peak": round(max(s["rss_mb"] for s in samples), 1),
        "dashboard_rss_mb_end": round(samples[-1]["rss_mb"], 1),
        "page": {"batches": page.batches, "cards_pushed": page.cards,
                 "overlays_fetched": page.overlays,
                 "batches_per_s": round(page.batches / (samples[-1]["t"] + 3), 2)},
        "publishers_behind_schedule_s": round(max(r["behind_s"] for r in results), 3),
    }
    if args.hostile:
        before = proc_sample(dash.pid)
        report["hostile"] = hostile(broker.port, args.hostile_duration)
        time.sleep(2.0)
        after = proc_sample(dash.pid)
        with urllib.request.urlopen(url + "api/fleet") as r:
            meta = json.load(r)["meta"]
        report["hostile"].update({
            "dashboard_rss_mb_before": round(before["rss_mb"], 1),
            "dashboard_rss_mb_after": round(after["rss_mb"], 1),
            "dashboard_cpu_percent": round(100 * (after["cpu_s"] - before["cpu_s"])
                                           / (args.hostile_duration + 2.0), 1),
            "ids_tracked": meta["devices"], "dropped": meta["dropped"],
            "overlay_bytes_kept": meta["overlay_bytes"]})
    page.stop.set()
    dash.terminate()
    dash.wait(10)
    broker.stop()
    report["samples"] = samples
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=1))
    return report


if __name__ == "__main__":
    main()
