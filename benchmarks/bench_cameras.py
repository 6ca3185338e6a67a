"""Many cameras on one agent: total throughput, each camera's share, and paced capacity.

    python benchmarks/bench_cameras.py --out docs/benchmarks/cameras.json
    python benchmarks/bench_cameras.py --counts 1,2,4 --paced 15,30 --duration 15

One agent process, one compiled model, N cameras all reading the demo clip, on a real
Mosquitto; every figure comes from the agent's own per-camera stats (``frames.inferred``,
``captured``, ``dropped`` over the measured window, after a warm-up). Two parts, in one run:

- **fairness**: N = 1, 2, 4 cameras reading the clip as fast as inference takes frames
  (``realtime = false``: no frame decoded in vain): total inferred fps against one
  camera's, and each camera's share (goal: total within 10 % of one camera's, each share
  within 10 % of the others); ``--also-realtime`` adds the same counts read like live
  cameras flooding the agent (``fps = 1000``, latest frame wins: the decode of the frames
  that are dropped is paid too);
- **capacity**: cameras paced at 15 and 30 fps, N growing until frames drop: how many
  such cameras one device serves (a camera is served when it loses < 1 % of its frames).

Prints the ratios; writes JSON and a chart (PNG) next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools.broker import Broker  # noqa: E402
from tools.demo import find_bundle  # noqa: E402

FAST_FPS = 1000.0  # the reader's cap: "as fast as it goes"
SERVED_DROP = 0.01  # a paced camera losing less than this share of its frames is served


def agent_config(bundle: Path, clip: Path, port: int, cameras: int, fps: float,
                 stats_interval: float, realtime: bool) -> str:
    text = (f'device_id = "bench"\nlog_level = "WARNING"\n'
            f'[source]\nloop = true\nstall_timeout_s = 10.0\n'
            f'realtime = {"true" if realtime else "false"}\n'
            f'[model]\nbundle = {json.dumps(str(bundle))}\ntarget = "cpu"\n'
            f'devices = ["CPU"]\n'
            f'[output]\nmax_publish_fps = 0.0\nstats_interval_s = {stats_interval}\n'
            f'[mqtt]\nport = {port}\nprefix = "bench"\n')
    for i in range(1, cameras + 1):
        text += f'[[cameras]]\nid = "cam{i}"\nuri = {json.dumps(str(clip))}\nfps = {fps}\n'
    return text


def run(bundle: Path, clip: Path, work: Path, cameras: int, fps: float, warmup: float,
        duration: float, realtime: bool = True, stats_interval: float = 1.0) -> Dict[str, Any]:
    """One agent with ``cameras`` cameras at ``fps``; per-camera counts over the window."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    work.mkdir(parents=True, exist_ok=True)
    broker = Broker(work / "mosquitto").start()
    ticks: List[Dict[str, Any]] = []
    lock = threading.Lock()

    def on_message(_c, _u, msg) -> None:
        with lock:
            ticks.append(json.loads(msg.payload))

    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, *_: c.subscribe("bench/+/stats", qos=1)
    client.on_message = on_message
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    config = work / "agent.toml"
    config.write_text(agent_config(bundle, clip, broker.port, cameras, fps, stats_interval,
                                   realtime))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    agent = subprocess.Popen([sys.executable, "-m", "edge_agent", "--config", str(config)],
                             cwd=str(ROOT), env=env)
    try:
        time.sleep(3.0 + warmup + duration)  # start-up, warm-up, the measured window
    finally:
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(20)
        client.loop_stop()
        broker.stop()
    with lock:
        got = list(ticks)
    per: Dict[str, Dict[str, Any]] = {}
    for cid in (f"cam{i}" for i in range(1, cameras + 1)):
        mine = [t for t in got if t["device_id"] == cid and t["uptime_s"] >= warmup]
        if len(mine) < 2:
            raise SystemExit(f"too few stats from {cid} (agent exit {code})")
        first, last = mine[0], mine[-1]
        span = last["uptime_s"] - first["uptime_s"]

        def delta(name: str, a=first, b=last) -> int:
            return b["frames"][name] - a["frames"][name]

        captured = delta("captured")
        per[cid] = {"inferred_fps": round(delta("inferred") / span, 2),
                    "captured_fps": round(captured / span, 2),
                    "dropped_fraction": round((delta("dropped") + delta("stale"))
                                              / max(1, captured), 4),
                    "latency_p50_ms": statistics.median(
                        t["latency_ms"]["p50"] for t in mine if t["latency_ms"]["p50"]
                        is not None) if any(t["latency_ms"]["p50"] for t in mine) else None}
    agent_ticks = [t for t in got if t["device_id"] == "bench" and t["uptime_s"] >= warmup]
    total = sum(c["inferred_fps"] for c in per.values())
    shares = [c["inferred_fps"] / total if total else 0.0 for c in per.values()]
    return {"cameras": cameras, "fps": fps, "realtime": realtime, "exit_code": code,
            "total_inferred_fps": round(total, 2),
            "shares": [round(s, 4) for s in shares],
            "share_spread": round((max(shares) - min(shares)) / (1.0 / cameras), 4)
            if cameras > 1 else 0.0,
            "worst_dropped_fraction": max(c["dropped_fraction"] for c in per.values()),
            "cpu_percent": round(statistics.fmean(t["process"]["cpu_percent"]
                                                  for t in agent_ticks), 1)
            if agent_ticks else None,
            "per_camera": per}


def chart(result: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    fair = result["fairness"]
    xs = [r["cameras"] for r in fair]
    bottoms = [0.0] * len(fair)
    for k in range(max(xs)):
        vals = [r["per_camera"][f"cam{k + 1}"]["inferred_fps"] if k < r["cameras"] else 0.0
                for r in fair]
        ax1.bar([str(x) for x in xs], vals, bottom=bottoms, label=f"cam{k + 1}")
        bottoms = [b + v for b, v in zip(bottoms, vals)]
    if result.get("flood"):
        ax1.plot([str(r["cameras"]) for r in result["flood"]],
                 [r["total_inferred_fps"] for r in result["flood"]], "kx", ms=10, mew=2,
                 label="total, read like live cameras at 1000 fps")
    ax1.set_ylim(0, 1.15 * max(bottoms + [r["total_inferred_fps"]
                                          for r in result.get("flood", [])]))
    ax1.set_xlabel("cameras (clip read as fast as inference takes it)")
    ax1.set_ylabel("inferred frames/s (stacked per camera)")
    ax1.set_title("one model shared: total and shares")
    ax1.legend(fontsize=8)
    for pace, rows in result["capacity"].items():
        ax2.plot([r["cameras"] for r in rows], [100 * r["worst_dropped_fraction"] for r in rows],
                 "o-", label=f"{pace} fps cameras")
    ax2.axhline(100 * SERVED_DROP, color="grey", ls="--", lw=1, label="1 % lost")
    ax2.set_xlabel("cameras")
    ax2.set_ylabel("frames lost by the worst camera (%)")
    ax2.set_title("paced cameras: capacity")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", help="bundle version dir (default: the demo bundle)")
    p.add_argument("--clip", default=str(ROOT / "demo" / "clip.mp4"))
    p.add_argument("--counts", default="1,2,4", help="camera counts for the fairness part")
    p.add_argument("--paced", default="15,30", help="camera rates for the capacity part")
    p.add_argument("--max-paced", type=int, default=16, help="most paced cameras tried")
    p.add_argument("--also-realtime", action="store_true",
                   help="fairness counts again, read like live cameras at 1000 fps")
    p.add_argument("--warmup", type=float, default=4.0)
    p.add_argument("--duration", type=float, default=12.0)
    p.add_argument("--out", default="runs/bench/cameras.json")
    p.add_argument("--work", default="runs/bench/cameras-work")
    args = p.parse_args(argv)
    bundle = Path(args.bundle).resolve() if args.bundle else find_bundle(ROOT / "demo" / "models")
    clip, work = Path(args.clip), Path(args.work)
    counts = [int(x) for x in args.counts.split(",") if x]
    result: Dict[str, Any] = {
        "bundle": str(bundle), "clip": str(clip), "cpu_count": os.cpu_count(),
        "platform": platform.platform(), "load_avg_before": list(os.getloadavg()),
        "warmup_s": args.warmup, "duration_s": args.duration,
        "command": " ".join([sys.executable, *sys.argv]), "capacity": {}}
    for part, realtime in (("fairness", False), ("flood", True)):
        if part == "flood" and not args.also_realtime:
            continue
        result[part] = []
        for n in counts:
            row = run(bundle, clip, work / f"{part}-{n}", n, FAST_FPS, args.warmup,
                      args.duration, realtime=realtime)
            result[part].append(row)
            print(f"{part} x{n}: total {row['total_inferred_fps']:.1f} fps, shares "
                  f"{[f'{s:.1%}' for s in row['shares']]}, cpu {row['cpu_percent']}%",
                  flush=True)
        one = result[part][0]["total_inferred_fps"] if result[part] else 0.0
        for row in result[part]:
            row["total_vs_one_camera"] = round(row["total_inferred_fps"] / one, 3) if one \
                else None
    for pace in (float(x) for x in args.paced.split(",") if x):
        rows: List[Dict[str, Any]] = []
        n = 1
        while n <= args.max_paced:
            row = run(bundle, clip, work / f"paced-{pace:g}-{n}", n, pace, args.warmup,
                      args.duration)
            rows.append(row)
            print(f"{pace:g} fps x{n}: total {row['total_inferred_fps']:.1f} fps, worst loss "
                  f"{row['worst_dropped_fraction']:.1%}, cpu {row['cpu_percent']}%", flush=True)
            if row["worst_dropped_fraction"] >= 5 * SERVED_DROP:
                break
            n = n * 2 if n < 4 else n + 2
        served = [r["cameras"] for r in rows if r["worst_dropped_fraction"] < SERVED_DROP]
        result["capacity"][f"{pace:g}"] = rows
        result.setdefault("served", {})[f"{pace:g}"] = max(served) if served else 0
    result["load_avg_after"] = list(os.getloadavg())
    for part, title in (("fairness", "clip read as fast as inference takes it"),
                        ("flood", "clip read like live cameras at 1000 fps")):
        if result.get(part):
            print(f"\n{part} ({title}):")
        for row in result.get(part, []):
            print(f"  {row['cameras']} camera(s): total {row['total_inferred_fps']:.1f} fps "
                  f"= {row['total_vs_one_camera']:.2f}x one camera's; share spread "
                  f"{row['share_spread']:.1%} of a fair share")
    for pace, most in result.get("served", {}).items():
        print(f"capacity: {most} camera(s) at {pace} fps served with < {SERVED_DROP:.0%} lost")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    chart(result, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()
