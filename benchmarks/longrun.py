"""Long-run reliability run of the agent against real parts; writes a table of figures.

Not a timed test: the full versions of what ``tests/agent/e2e/test_truthful_status.py``
checks in short form. Each scenario starts the real agent (``python -m edge_agent``) on
the tiny test bundle against a real Mosquitto and camera stand-ins on loopback:

- ``broker``: the broker stopped and restarted N times (default 10, 5 s outages), with
  a persistent QoS 1 subscriber: status and stats intervals lost, time to reconnect;
- ``camera``: RTSP (H.264, GStreamer) killed and restarted, frozen with SIGSTOP, an HTTP
  MJPEG camera away for 45 s, and a camera back with a new resolution: time to
  detect, time to recover after the camera returns, flaps, stale masks;
- ``soak``: a full-speed file source (no publish limit) for ``--soak-s`` seconds,
  sampling the agent's RSS, open fds and threads: growth after warm-up.

Every scenario also counts crashes (agent exits) and tracebacks in the agent's log.

    python benchmarks/longrun.py --out longrun-out --soak-s 1800     # the full run
    python benchmarks/longrun.py --out longrun-out --soak-s 240 --restarts 10

Writes ``OUT/longrun.json`` and ``OUT/longrun.md``. Needs mosquitto, and for RTSP the
GStreamer RTSP server (scripts/setup.sh all).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a repository tool: runs the repository's test stand-ins

from tests.agent.helpers import (  # noqa: E402
    AgentProcess,
    Collector,
    PersistentSubscriber,
    agent_config,
    gaps,
    scene,
    wait_until,
    write_clip,
)
from tests.helpers import rtsp_server  # noqa: E402
from tests.helpers.mjpeg_server import MjpegServer  # noqa: E402
from tests.helpers.tiny_bundle import make_tiny_bundle  # noqa: E402
from tools.broker import Broker, free_port  # noqa: E402

STALL_S = 5.0


def _tracebacks(agent: AgentProcess) -> int:
    return agent.log().count("Traceback (most recent call last)")


def _statuses(col: Collector) -> List[tuple]:
    with col.lock:
        return [(m[1]["state"], m[1]["reason"], m[1]["ts"]) for m in col.messages
                if m[0] == "status"]


def _first(col: Collector, state: str, after: float, timeout: float) -> Optional[float]:
    """Agent-side time (status ts) of the first status ``state`` after ``after``."""
    def find():
        for s, _, ts in _statuses(col):
            if s == state and ts >= after:
                return ts
        return None
    return wait_until(find, timeout, 0.1)


def _finish(agent: AgentProcess, row: Dict[str, Any]) -> Dict[str, Any]:
    row["crashes"] = 0 if agent.alive() else 1
    code = agent.terminate(15) if agent.alive() else agent.proc.returncode
    row["exit_code"] = code
    row["tracebacks"] = _tracebacks(agent)
    return row


def broker_restarts(work: Path, bundle: Path, clip: Path, restarts: int,
                    outage_s: float) -> Dict[str, Any]:
    data = work / "persist"
    data.mkdir(parents=True, exist_ok=True)
    b = Broker(work / "broker", extra_config=["persistence true",
                                              f"persistence_location {data}/"]).start()
    dev = "longrun-broker"
    sub = PersistentSubscriber(b.host, b.port, dev)
    agent = AgentProcess(work / "agent", agent_config(
        bundle, str(clip), b.host, b.port, dev, output={"stats_interval_s": 1.0,
                                                       "max_publish_fps": 10.0}))
    reconnect: List[float] = []
    try:
        wait_until(lambda: len(sub.of("stats")) >= 3, 60)
        for _ in range(restarts):
            b.stop()
            time.sleep(outage_s)
            t, n = time.time(), len(sub.of("status"))
            b.start()

            def back(n=n):
                return any(s["state"] == "online" for s in sub.of("status")[n:])

            if wait_until(back, 60, 0.05):  # online received again by the subscriber
                reconnect.append(time.time() - t)
        time.sleep(3)
        stats = sub.of("stats")
        statuses = [s for s in sub.of("status") if s["reason"] != "connection lost"]
        row = {"scenario": f"broker stopped/restarted x{restarts} ({outage_s:.0f} s outages)",
               "stats_received": len({s["seq"] for s in stats}),
               "stats_lost": len(gaps([s["seq"] for s in stats])),
               "status_lost": len(gaps([s["seq"] for s in statuses])),
               "reconnect_s_max": round(max(reconnect), 2) if reconnect else None,
               "recovered": f"{len(reconnect)}/{restarts}"}
        return _finish(agent, row)
    finally:
        if agent.alive():
            agent.kill()
        sub.close()
        b.stop()


def _camera_agent(work: Path, bundle: Path, broker: Broker, uri: str, dev: str):
    col = Collector(broker.host, broker.port, dev)
    agent = AgentProcess(work / dev, agent_config(
        bundle, uri, broker.host, broker.port, dev,
        source={"stall_timeout_s": STALL_S, "reconnect_max_s": 30.0},
        output={"max_publish_fps": 10.0}))
    wait_until(lambda: col.last_state() == "online" and len(col.of("mask")) >= 3, 60)
    return col, agent


def _episode(col: Collector, t_fault: float, t_back: float, settle_s: float) -> Dict[str, Any]:
    """Figures for one fault: detection after t_fault, recovery after t_back."""
    detect = _first(col, "degraded", t_fault, 1)
    online = _first(col, "online", t_back, settle_s)
    during = [s for s, _, ts in _statuses(col) if t_fault <= ts < t_back]
    stale = [m for m in col.of("mask") if t_fault + 1.0 < m["published_at"] < t_back]
    reasons = sorted({r for s, r, ts in _statuses(col) if s == "degraded" and ts >= t_fault})
    return {"detect_s": round(detect - t_fault, 2) if detect else None,
            "recover_s": round(online - t_back, 2) if online else None,
            "flaps": during.count("online"), "stale_masks": len(stale),
            "reasons": "; ".join(reasons)[:160]}


def camera_faults(work: Path, bundle: Path, broker: Broker, outage_s: float,
                  freeze_s: float) -> List[Dict[str, Any]]:
    rows: List[Dict[str, Any]] = []
    if rtsp_server.available():
        cam = rtsp_server.RtspCamera(work / "rtsp", [scene(i, (240, 320)) for i in range(20)],
                                     fps=10, codec="h264").start()
        col, agent = _camera_agent(work, bundle, broker, cam.url, "longrun-rtsp")
        try:
            for name, fault, restore, hold in (
                    ("RTSP H.264 camera killed, back after 10 s", cam.stop, cam.start, 10.0),
                    (f"RTSP H.264 camera frozen (SIGSTOP) {freeze_s:.0f} s", cam.freeze,
                     cam.thaw, freeze_s)):
                t0 = time.time()
                fault()
                time.sleep(hold)
                t1 = time.time()
                restore()
                row = {"scenario": name, **_episode(col, t0, t1, 30)}
                rows.append(row)
                time.sleep(3)
            t0 = time.time()
            cam.stop()
            cam.set_frames([scene(i, (480, 640)) for i in range(20)])
            time.sleep(3)
            t1 = time.time()
            cam.start()
            row = {"scenario": "RTSP camera back with a new resolution (640x480)",
                   **_episode(col, t0, t1, 30)}
            new = wait_until(lambda: [m for m in col.of("mask") if m["frame_width"] == 640], 20)
            row["new_size_masks"] = len(new or [])
            rows.append(row)
            fin = _finish(agent, {})  # one agent went through the three RTSP faults
            for row in rows:
                row.update(fin)
        finally:
            if agent.alive():
                agent.kill()
            col.close()
            cam.stop()
    else:
        rows.append({"scenario": "RTSP (GStreamer RTSP server missing): not run"})
    mjpeg = MjpegServer(lambda i: scene(i), free_port(), fps=10).start()
    col, agent = _camera_agent(work, bundle, broker, mjpeg.url, "longrun-mjpeg")
    try:
        t0 = time.time()
        mjpeg.stop()
        time.sleep(outage_s)
        t1 = time.time()
        mjpeg.start()
        row = {"scenario": f"HTTP MJPEG camera away {outage_s:.0f} s", **_episode(col, t0, t1, 30)}
        rows.append(_finish(agent, row))
    finally:
        if agent.alive():
            agent.kill()
        col.close()
        mjpeg.stop()
    return rows


def _proc_sample(pid: int) -> Dict[str, int]:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        fields = dict(line.split(":", 1) for line in handle if ":" in line)
    return {"rss_kb": int(fields["VmRSS"].split()[0]), "threads": int(fields["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def soak(work: Path, bundle: Path, broker: Broker, clip: Path, seconds: float,
         warmup_s: float) -> Dict[str, Any]:
    dev = "longrun-soak"
    col = Collector(broker.host, broker.port, dev)
    agent = AgentProcess(work / "soak", agent_config(
        bundle, str(clip), broker.host, broker.port, dev,
        source={"fps": 1000.0}, output={"max_publish_fps": 0.0, "stats_interval_s": 5.0}))
    samples: List[Dict[str, Any]] = []
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < seconds and agent.alive():
            samples.append({"t": round(time.monotonic() - t0, 1),
                            **_proc_sample(agent.proc.pid)})
            time.sleep(5)
        after = [s for s in samples if s["t"] >= warmup_s] or samples[-1:]
        base, last = after[0], after[-1]
        stats = col.of("stats")
        masks = stats[-1]["frames"]["published"] if stats else 0
        row = {"scenario": f"full-speed soak {seconds / 60:.1f} min (warm-up {warmup_s:.0f} s)",
               "masks_published": masks,
               "mask_fps": round(masks / max(1.0, seconds), 1),
               "rss_mb_after_warmup": round(base["rss_kb"] / 1024, 1),
               "rss_mb_end": round(last["rss_kb"] / 1024, 1),
               "rss_growth_pct": round(100.0 * (last["rss_kb"] - base["rss_kb"])
                                       / base["rss_kb"], 2),
               "rss_mb_max": round(max(s["rss_kb"] for s in after) / 1024, 1),
               "fds_start_end": f"{base['fds']}->{last['fds']}",
               "threads_start_end": f"{base['threads']}->{last['threads']}",
               "errors": stats[-1]["frames"]["errors"] if stats else None}
        row = _finish(agent, row)
        row["samples"] = samples
        return row
    finally:
        if agent.alive():
            agent.kill()
        col.close()


COLUMNS = ("scenario", "crashes", "tracebacks", "detect_s", "recover_s", "flaps", "stale_masks",
           "stats_lost", "status_lost", "reconnect_s_max", "rss_growth_pct", "fds_start_end",
           "threads_start_end")


def to_markdown(rows: List[Dict[str, Any]], command: str) -> str:
    lines = [f"Command: `{command}`", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join("" if row.get(c) is None else str(row.get(c))
                                       for c in COLUMNS) + " |")
    lines += ["", "Details per scenario (reasons, counts) are in longrun.json."]
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="longrun-out")
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument("--broker-outage-s", type=float, default=5.0)
    parser.add_argument("--camera-outage-s", type=float, default=45.0)
    parser.add_argument("--freeze-s", type=float, default=15.0)
    parser.add_argument("--soak-s", type=float, default=1800.0)
    parser.add_argument("--warmup-s", type=float, default=60.0)
    parser.add_argument("--only", choices=("broker", "camera", "soak"), action="append")
    args = parser.parse_args(argv)
    only = set(args.only or ("broker", "camera", "soak"))
    out = Path(args.out).resolve()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    bundle = make_tiny_bundle(work / "bundle")
    clip = write_clip(work / "clip.avi", frames=60)
    rows: List[Dict[str, Any]] = []
    started = time.time()
    if "broker" in only:
        rows.append(broker_restarts(work / "b", bundle, clip, args.restarts,
                                    args.broker_outage_s))
        print(json.dumps(rows[-1]), flush=True)
    if only & {"camera", "soak"}:
        broker = Broker(work / "shared-broker").start()
        try:
            if "camera" in only:
                rows += camera_faults(work / "c", bundle, broker, args.camera_outage_s,
                                      args.freeze_s)
                print(json.dumps(rows[-4:]), flush=True)
            if "soak" in only:
                rows.append(soak(work / "s", bundle, broker, clip, args.soak_s, args.warmup_s))
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "samples"}),
                      flush=True)
        finally:
            broker.stop()
    command = "python benchmarks/longrun.py " + " ".join(argv if argv is not None
                                                          else sys.argv[1:])
    report = {"command": command, "started": started, "wall_s": round(time.time() - started),
              "stall_timeout_s": STALL_S, "rows": rows}
    (out / "longrun.json").write_text(json.dumps(report, indent=2))
    (out / "longrun.md").write_text(to_markdown(rows, command))
    print((out / "longrun.md").read_text())
    return report


if __name__ == "__main__":
    main()
