"""Local vs remote inference, side by side in one run: the same agent, bundle and clip,
with the model here (OpenVINO on this CPU) and on a KServe v2 server on loopback (Triton
from nvidia-pytriton running the bundle's repository IR with OpenVINO, tools/kserve_server.py).

    .venv/bin/python benchmarks/bench_remote.py --bundle demo/models/pets-mobile/3.2.0 \\
        --duration 8 --repeats 2 --out docs/benchmarks/remote-inference.json

Per repeat, local and remote alternate (order swapped every repeat), each twice:
- **throughput**: the clip read with ``realtime = false`` (every frame inferred, as fast
  as the path allows): inference fps, agent CPU% and CPU ms per frame (the device side),
  the server's CPU% (every process of its group, from /proc);
- **latency**: the clip paced at ``--camera-fps`` (a live camera): capture->publish p50/p95
  from the agent's own stats.
On loopback the server shares this machine's cores with the agent: remote fps here is
not what a separate box gives; the device-side CPU per frame is the transferable figure.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from build_models.repository import add_bundle  # noqa: E402
from tests.helpers.kserve import KServeServer, server_python  # noqa: E402
from tools.broker import Broker, free_port  # noqa: E402

TICK_HZ = os.sysconf("SC_CLK_TCK")


def group_cpu_s(pgid: int) -> float:
    """User+system CPU seconds of every live process in a process group."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the name: state ppid pgrp ...
            total += int(fields[11]) + int(fields[12])
    return total / TICK_HZ


def run_agent(mode: str, phase: str, bundle: Path, clip: Path, broker: Broker,
              server: KServeServer, duration: float, camera_fps: float,
              work: Path) -> Dict[str, Any]:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    device_id = f"bench-{mode}-{phase}"
    stats: List[Dict[str, Any]] = []
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, *_: c.subscribe(f"bench/{device_id}/stats", qos=1)
    client.on_message = lambda _c, _u, msg: stats.append(json.loads(msg.payload))
    client.connect(broker.host, broker.port)
    client.loop_start()
    server_line = (f'server = "{server.url}"\nserver_requests = 2\nserver_timeout_s = 5.0\n'
                   if mode == "remote" else "")
    fps, realtime = (1000.0, "false") if phase == "throughput" else (camera_fps, "true")
    config = work / f"{device_id}.toml"
    config.write_text(
        f'device_id = "{device_id}"\nlog_level = "WARNING"\n'
        f'[source]\nuri = {json.dumps(str(clip))}\nloop = true\nfps = {fps:.1f}\n'
        f'realtime = {realtime}\n'
        f'[model]\nbundle = {json.dumps(str(bundle))}\ntarget = "cpu"\n{server_line}'
        f'[output]\nmax_publish_fps = 0.0\nstats_interval_s = 2.0\n'
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\nprefix = "bench"\n')
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    agent = subprocess.Popen([sys.executable, "-m", "edge_agent", "--config", str(config)],
                             cwd=str(ROOT), env=env)
    try:
        time.sleep(4.5)  # start-up and the warm-up tick
        pgid = server.proc.pid
        s0, t0 = group_cpu_s(pgid), time.monotonic()
        time.sleep(duration)
        server_cpu = 100.0 * (group_cpu_s(pgid) - s0) / (time.monotonic() - t0)
    finally:
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(20)
        client.loop_stop()
        client.disconnect()
    ticks = [s for s in stats if s["uptime_s"] > 4.0 and s["latency_ms"]["count"]]
    if not ticks:
        raise SystemExit(f"{device_id}: no stats from the agent (exit {code})")
    fps_inf = statistics.fmean(t["fps"]["inference"] for t in ticks)
    cpu = statistics.fmean(t["process"]["cpu_percent"] for t in ticks)
    return {"mode": mode, "phase": phase, "exit_code": code, "ticks": len(ticks),
            "device": ticks[-1]["device"],
            "fps_inference": round(fps_inf, 2),
            "agent_cpu_percent": round(cpu, 1),
            "agent_cpu_ms_per_frame": round(cpu * 10.0 / max(fps_inf, 1e-6), 2),
            "server_cpu_percent": round(server_cpu, 1) if mode == "remote" else 0.0,
            "latency_p50_ms": round(statistics.median(t["latency_ms"]["p50"] for t in ticks), 2),
            "latency_p95_ms": round(statistics.median(t["latency_ms"]["p95"] for t in ticks), 2),
            "errors": ticks[-1]["frames"].get("errors", 0)}


def wire(server: KServeServer, bundle: Path, n: int = 40) -> Dict[str, Any]:
    """One client, one request at a time: wall and client CPU per request with the binary
    tensor extension vs JSON ``data`` lists (why the agent speaks binary)."""
    import numpy as np

    from edge_agent.bundle.manifest import load_manifest
    from edge_agent.inference.remote import KServeClient, repository_version

    man = load_manifest(bundle)
    h, w = man.input.shape[2], man.input.shape[3]
    frame = np.random.default_rng(0).integers(0, 255, (1, h, w, 3), np.uint8)
    client = KServeClient(server.url, 30.0)
    out: Dict[str, Any] = {"frame": [1, h, w, 3]}
    for binary in (True, False):
        for _ in range(3):
            client.infer(man.name, repository_version(man.version), "image", frame, binary)
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            client.infer(man.name, repository_version(man.version), "image", frame, binary)
        out["binary" if binary else "json"] = {
            "wall_ms": round((time.perf_counter() - w0) / n * 1e3, 2),
            "client_cpu_ms": round((time.process_time() - c0) / n * 1e3, 2)}
    client.close()
    return out


def chart(result: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["summary"]
    panels = [("throughput fps", "fps_inference", "throughput"),
              ("agent CPU ms / frame", "agent_cpu_ms_per_frame", "throughput"),
              ("capture->publish p50 ms", "latency_p50_ms", "latency")]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, (title, key, phase) in zip(axes, panels):
        vals = [s[m][phase][key] for m in ("local", "remote")]
        ax.bar(["local", "remote"], vals, color=["#4c72b0", "#dd8452"])
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:g}", ha="center", va="bottom")
        ax.set_title(title)
    fig.suptitle(f"{result['bundle']} on {result['cpu']} — remote: Triton (pytriton) on "
                 "loopback, same cores", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=str(ROOT / "demo" / "models" / "pets-mobile" / "2.0.0"))
    p.add_argument("--clip", default=str(ROOT / "demo" / "clip.mp4"))
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--camera-fps", type=float, default=15.0)
    p.add_argument("--out", default=str(ROOT / "runs" / "bench" / "remote-inference.json"))
    args = p.parse_args()
    python = server_python()
    if python is None:
        raise SystemExit("no model server venv: scripts/setup_model_server.sh failed")
    bundle, clip, out = Path(args.bundle).resolve(), Path(args.clip).resolve(), Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp:
        work = Path(tmp)
        add_bundle(bundle, work / "repository", ["cpu"])
        server = KServeServer(python, work / "repository" / "cpu", free_port(), free_port(),
                              free_port(), work / "server.log").start()
        broker = Broker(work / "mosquitto").start()
        runs: List[Dict[str, Any]] = []
        try:
            for r in range(args.repeats):
                for mode in (("local", "remote") if r % 2 == 0 else ("remote", "local")):
                    for phase in ("throughput", "latency"):
                        run = run_agent(mode, phase, bundle, clip, broker, server,
                                        args.duration, args.camera_fps, work)
                        run["repeat"] = r
                        print(json.dumps(run), flush=True)
                        runs.append(run)
            wire_cost = wire(server, bundle)
            print(json.dumps(wire_cost), flush=True)
        finally:
            broker.stop()
            server.kill()
    summary: Dict[str, Any] = {}
    for mode in ("local", "remote"):
        summary[mode] = {}
        for phase in ("throughput", "latency"):
            mine = [x for x in runs if x["mode"] == mode and x["phase"] == phase]
            summary[mode][phase] = {k: round(statistics.median(x[k] for x in mine), 2)
                                    for k in ("fps_inference", "agent_cpu_percent",
                                              "agent_cpu_ms_per_frame", "server_cpu_percent",
                                              "latency_p50_ms", "latency_p95_ms")}
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    result = {"bundle": f"{bundle.parent.name} {bundle.name}", "clip": clip.name, "cpu": cpu,
              "cores": os.cpu_count(),
              "loadavg_1m_before_after": [round(load_before[0], 2),
                                          round(os.getloadavg()[0], 2)],
              "duration_s": args.duration, "repeats": args.repeats,
              "camera_fps": args.camera_fps, "threading": threading.active_count(),
              "server": "Triton (nvidia-pytriton 0.7.0) + OpenVINO, loopback, same machine",
              "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "summary": summary, "wire": wire_cost, "runs": runs}
    out.write_text(json.dumps(result, indent=2) + "\n")
    chart(result, out.with_suffix(".png"))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
