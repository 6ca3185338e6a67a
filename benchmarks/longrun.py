"""Long-run reliability run of the agent against real parts; writes a table of figures.

Not a timed test: the full versions of what ``tests/agent/e2e/test_truthful_status.py``
checks in short form. Each scenario starts the real agent (``python -m edge_agent``) on
the tiny test bundle against a real Mosquitto and camera stand-ins on loopback:

- ``broker``: the broker stopped and restarted N times (default 10, 5 s outages), with
  a persistent QoS 1 subscriber: status and stats intervals lost, time to reconnect;
- ``crash``: the broker killed with ``kill -9`` N times (an OOM kill, a power cut of the
  process: nothing saved on the way) and started again after outages of 1, 2, 4, 6, 8,
  10 s (``--crash-outages-s``, cycled), running the segedge_broker role's own rendered
  configuration (tests/rig/broker_config.py: its mosquitto.conf with the persistence
  settings, ACL, TLS and client certificates for the agent and a subscriber account):
  acknowledged stats and statuses lost at a subscriber that relies on its persistent
  session (and how many times the broker had lost that session), and per outage the
  reconnect times (broker back -> the agent connected, per the broker's log; -> its
  ``online`` status and its first message received by a fast subscriber);
- ``camera``: RTSP (H.264, GStreamer) killed and restarted, frozen with SIGSTOP, an HTTP
  MJPEG camera away for 45 s, and a camera back with a new resolution: time to
  detect, time to recover after the camera returns, flaps, stale masks;
- ``soak``: a full-speed file source (no publish limit) for ``--soak-s`` seconds,
  sampling the agent's RSS, open fds and threads: growth after warm-up.

Every scenario also counts crashes (agent exits) and tracebacks in the agent's log.

    python benchmarks/longrun.py --out longrun-out --soak-s 1800     # the full run
    python benchmarks/longrun.py --out longrun-out --soak-s 240 --restarts 10
    python benchmarks/longrun.py --out docs/benchmarks/longrun-crash --only crash --kills 10

Writes ``OUT/longrun.json`` and ``OUT/longrun.md``. Needs mosquitto, and for RTSP the
GStreamer RTSP server (scripts/setup.sh all).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import ssl
import sys
import threading
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
from tests.rig.broker_config import LocalBroker  # noqa: E402
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


class _AccountSubscriber:
    """A QoS 1 subscriber with a persistent session (clean session off) on the role's TLS
    listener as a subscriber account (its own client certificate); every stats and status
    message of ``device`` with the time it arrived.

    ``keeper=False`` (the stopwatch): reconnects within 0.1-0.2 s and subscribes again on
    every connect, so its own reconnect adds little to the agent's. ``keeper=True`` (the
    loss count): a client that relies on its session, as a persistent subscriber may: the
    scenario takes it offline before each kill and back after the agent is (``offline()``,
    ``online()``), so the broker holds the agent's acknowledged messages for it across the
    crash; it subscribes only when the broker says its session is gone (CONNACK session
    present 0, counted in ``sessions_lost``)."""

    def __init__(self, broker: LocalBroker, name: str, device: str,
                 keeper: bool = False) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        files = broker.identity_files(name)
        self.messages: List[Dict[str, Any]] = []
        self.lock = threading.Lock()
        self.connects = self.sessions_lost = 0
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=name, clean_session=False,
                                  protocol=mqtt.MQTTv311)
        self.client.tls_set(ca_certs=files["ca"], certfile=files["cert"],
                            keyfile=files["key"], cert_reqs=ssl.CERT_REQUIRED)
        subscribed = threading.Event()
        topic = f"segedge/{device}/+"

        def on_connect(client, userdata, flags, reason, props):
            self.connects += 1
            if self.connects > 1 and not flags.session_present:
                self.sessions_lost += 1
            if not keeper or not flags.session_present:
                client.subscribe(topic, qos=1)

        self.client.on_connect = on_connect
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.2)
        self.port = broker.port
        self.client.connect_async("127.0.0.1", broker.port, keepalive=10)
        self.client.loop_start()
        if not wait_until(lambda: subscribed.is_set() or self.connects and keeper, 15):
            raise RuntimeError(f"could not subscribe to {topic}")

    def offline(self) -> None:
        """A clean DISCONNECT: the broker keeps the session and queues QoS 1 for it."""
        self.client.disconnect()
        self.client.loop_stop()

    def online(self, timeout: float = 15.0) -> bool:
        connects = self.connects
        self.client.connect_async("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        return bool(wait_until(lambda: self.connects > connects, timeout))

    def _on_message(self, client, userdata, msg) -> None:
        kind = msg.topic.rsplit("/", 1)[-1]
        if kind in ("stats", "status"):
            with self.lock:
                self.messages.append({"kind": kind, "received": time.time(),
                                      "retained": bool(msg.retain), **json.loads(msg.payload)})

    def of(self, kind: str) -> List[Dict[str, Any]]:
        with self.lock:
            return [m for m in self.messages if m["kind"] == kind]

    def since(self, t: float) -> List[Dict[str, Any]]:
        """Live messages received from ``t`` on (not the retained status that every
        re-subscription brings back)."""
        with self.lock:
            return [m for m in self.messages if m["received"] >= t and not m["retained"]]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _connected_at(log: Path, device: str, after_line: int, timeout: float) -> Optional[float]:
    """Wall time when the broker's log first says ``device`` connected, past line
    ``after_line`` (polled every 10 ms: the log carries no timestamps)."""
    needle = f" as {device} "

    def find():
        lines = log.read_text(errors="replace").splitlines()[after_line:]
        return time.time() if any("New client connected" in line and needle in line
                                  for line in lines) else None
    return wait_until(find, timeout, 0.01)


def broker_crashes(work: Path, bundle: Path, clip: Path, kills: int,
                   outages_s: List[float], overrides: Dict[str, Any],
                   seed: int = 17) -> Dict[str, Any]:
    """``kill -9`` of a broker running the segedge_broker role's rendered configuration."""
    dev, reader, keeper = "longrun-crash", "dash", "keeper"
    shutil.rmtree(work / "broker", ignore_errors=True)  # no sessions from an earlier run
    broker = LocalBroker(work / "broker", free_port(), "certificate", [dev], [reader, keeper],
                         [], overrides=dict(overrides)).start()
    persistence = [line for line in broker.conf.read_text().splitlines()
                   if line.startswith(("persistence ", "autosave"))]
    files = broker.identity_files(dev)
    sub = _AccountSubscriber(broker, reader, dev)  # the stopwatch
    kept = _AccountSubscriber(broker, keeper, dev, keeper=True)  # the loss count
    agent = AgentProcess(work / "agent", agent_config(
        bundle, str(clip), "127.0.0.1", broker.port, dev,
        output={"stats_interval_s": 1.0, "max_publish_fps": 10.0},
        mqtt={"tls_ca": files["ca"], "tls_cert": files["cert"], "tls_key": files["key"]}))
    rnd = random.Random(seed)
    episodes: List[Dict[str, Any]] = []
    try:
        wait_until(lambda: len(sub.of("stats")) >= 3, 60)
        for i in range(kills):
            outage = outages_s[i % len(outages_s)]
            kept.offline()  # the broker queues the agent's stats for its session
            time.sleep(rnd.uniform(1.0, 3.0))  # the kill lands anywhere in a stats period
            broker.kill()
            time.sleep(outage)
            lines = len(broker.log.read_text(errors="replace").splitlines()) \
                if broker.log.exists() else 0
            t = time.time()
            broker.start()
            connected = _connected_at(broker.log, dev, lines, 60)
            online = wait_until(lambda t=t: next((m["received"] for m in sub.since(t)
                                                  if m["kind"] == "status"
                                                  and m["state"] == "online"), None), 60, 0.02)
            first = wait_until(lambda t=t: next((m["received"] for m in sub.since(t)), None),
                               60, 0.02)
            time.sleep(1.0)  # the agent is back and publishing; then the keeper returns
            kept.online()
            episodes.append({"outage_s": outage,
                             "agent_connected_s": round(connected - t, 2) if connected else None,
                             "online_received_s": round(online - t, 2) if online else None,
                             "first_message_s": round(first - t, 2) if first else None})
            print(json.dumps(episodes[-1]), flush=True)
        time.sleep(3)  # the keeper's queue
        stats = kept.of("stats")
        statuses = [s for s in kept.of("status") if s["reason"] != "connection lost"]
        per_outage: Dict[str, Dict[str, Any]] = {}
        for outage in sorted({e["outage_s"] for e in episodes}):
            rows = [e for e in episodes if e["outage_s"] == outage]
            per_outage[f"{outage:g}"] = {
                key: max((e[key] for e in rows if e[key] is not None), default=None)
                for key in ("agent_connected_s", "online_received_s", "first_message_s")}
        online = [e["online_received_s"] for e in episodes if e["online_received_s"]]
        row = {"scenario": f"broker kill -9 x{kills} (role config: {', '.join(persistence[1:])}; "
                           f"outages {'/'.join(f'{o:g}' for o in outages_s)} s)",
               "persistence": persistence,
               "stats_received": len({(s["session"], s["seq"]) for s in stats}),
               "stats_lost": len(gaps([s["seq"] for s in stats])),
               "status_received": len({(s["session"], s["seq"]) for s in statuses}),
               "status_lost": len(gaps([s["seq"] for s in statuses])),
               "sessions_lost": f"{kept.sessions_lost}/{kept.connects - 1}",
               "stopwatch_stats_lost": len(gaps([s["seq"] for s in sub.of("stats")])),
               "reconnect_s_max": max(online) if online else None,
               "recovered": f"{len(online)}/{kills}",
               "reconnect_by_outage_s": per_outage, "episodes": episodes}
        return _finish(agent, row)
    finally:
        if agent.alive():
            agent.kill()
        sub.close()
        kept.close()
        broker.stop()


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
           "stats_lost", "status_lost", "sessions_lost", "reconnect_s_max", "rss_growth_pct",
           "fds_start_end", "threads_start_end")


def to_markdown(rows: List[Dict[str, Any]], command: str) -> str:
    lines = [f"Command: `{command}`", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join("" if row.get(c) is None else str(row.get(c))
                                       for c in COLUMNS) + " |")
    for row in rows:
        if row.get("reconnect_by_outage_s"):
            lines += ["", f"Reconnect after a broker crash ({row['scenario']}), the slowest "
                          "episode per outage length, s after the broker was started again:",
                      "", "| outage s | agent connected | `online` received | first message "
                          "received |", "|---|---|---|---|"]
            for outage, fig in row["reconnect_by_outage_s"].items():
                lines.append(f"| {outage} | {fig['agent_connected_s']} | "
                             f"{fig['online_received_s']} | {fig['first_message_s']} |")
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
    parser.add_argument("--kills", type=int, default=10, help="crash: kill -9 of the broker")
    parser.add_argument("--crash-outages-s", default="1,2,4,6,8,10",
                        help="crash: outage lengths, cycled over the kills")
    parser.add_argument("--broker-set", action="append", default=[], metavar="VAR=YAML",
                        help="crash: a segedge_broker role variable over its default, e.g. "
                             "segedge_broker_autosave_interval=60 (repeatable)")
    parser.add_argument("--only", choices=("broker", "crash", "camera", "soak"),
                        action="append")
    args = parser.parse_args(argv)
    only = set(args.only or ("broker", "crash", "camera", "soak"))
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
    if "crash" in only:
        import yaml

        overrides = {}
        for item in args.broker_set:
            name, _, value = item.partition("=")
            overrides[name] = yaml.safe_load(value)
        rows.append(broker_crashes(work / "k", bundle, clip, args.kills,
                                   [float(x) for x in args.crash_outages_s.split(",")],
                                   overrides))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "episodes"}), flush=True)
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
