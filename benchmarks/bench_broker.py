"""Fleet fan-in through the broker the segedge_broker role configures (a benchmark).

    python benchmarks/bench_broker.py --devices 50 --duration 60 \
        --out docs/benchmarks/broker-fleet.json

Mosquitto runs on loopback with the role's own mosquitto.conf, ACL and certificates
(tests/rig/broker_config.py renders them; certificate mode, TLS on every connection).
Each simulated device connects with its own client certificate and publishes what an
agent publishes: a PNG mask message 10 times a second, a stats message every 5 s and a
retained status on connect, all at QoS 1 (masks at ``--mask-qos``), each carrying a
sequence number. ``--set VAR=VALUE`` puts a role variable over its default (e.g. the
persistence settings, to measure what they cost). Subscribers
(read-only accounts, as dashboards) take ``<prefix>/#`` at QoS 1. At the end every
subscriber's count is compared with what the broker acknowledged (PUBACK) per device:
a QoS-1 message acknowledged but not delivered to a subscriber counts as lost. The
broker's CPU time and RSS are sampled from /proc once a second. Writes JSON and a chart.

Sites, bridged (``--sites N``): N site brokers, each with ``--devices`` devices, bridged to
a central broker exactly as the role configures them (tests/rig/broker_config.py renders
the bridge from the role's site plan; one kit CA); the subscribers are at the centre.

    python benchmarks/bench_broker.py --sites 2 --devices 100 --mask-qos 0 --duration 60 \
        --out docs/benchmarks/broker-sites-2x100.json

Loss is then what the site broker acknowledged (QoS 1: status, stats) and the central
subscriber never got; masks cross the bridge at QoS 0 (the role's topic map), so their
delivered share is reported, not counted as loss. Every message carries its send time:
the end-to-end latency (device publish -> subscriber, through site broker, bridge and
central broker in sites mode) is reported per kind. CPU and RSS per broker, per tier.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import multiprocessing as mp
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.rig.broker_config import (  # noqa: E402
    LocalBroker,
    cpu_seconds,
    free_port,
    rss_kb,
    site_plan,
)
from tests.rig.mqtt_probe import Identity  # noqa: E402


def mask_payload(device: str, seq: int, size: int = 256) -> bytes:
    """A mask message shaped like the agent's: a PNG of a moving blob, base64, in JSON."""
    import cv2
    import numpy as np

    mask = np.zeros((size, size), np.uint8)
    cx = size // 2 + int(size * 0.2 * np.sin(seq / 15.0))
    cv2.ellipse(mask, (cx, size // 2), (size // 4, size // 3), seq % 180, 0, 360, 1, -1)
    cv2.circle(mask, (cx + size // 5, size // 4), size // 10, 2, -1)
    ok, png = cv2.imencode(".png", mask)
    return json.dumps({"device": device, "seq": seq, "ts": time.time(),
                       "captured_at": time.time(), "encoding": "png", "size": [size, size],
                       "mask": base64.b64encode(png.tobytes()).decode(),
                       "coverage": {"background": 0.6, "pet": 0.35, "border": 0.05},
                       "model": {"name": "pets-mobile", "version": "1.0.0"}}).encode()


def stats_payload(device: str, seq: int) -> bytes:
    return json.dumps({"device": device, "seq": seq, "ts": time.time(), "interval_s": 5.0,
                       "fps": {"capture": 10.0, "infer": 10.0, "publish": 10.0},
                       "latency_ms": {k: {"p50": 30.0, "p90": 40.0, "p99": 55.0}
                                      for k in ("capture", "infer", "post", "e2e")},
                       "frames": {"captured": 50, "inferred": 50, "dropped": 0},
                       "masks": {"published": 50, "dropped": 0}}).encode()


def _client(ident: Identity, on_message=None, clean: bool = True):
    import ssl

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=ident.client_id,
                         protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=ident.ca, certfile=ident.cert, keyfile=ident.key,
                   cert_reqs=ssl.CERT_REQUIRED)
    client.max_inflight_messages_set(20)
    client.max_queued_messages_set(0)
    if on_message:
        client.on_message = on_message
    return client


def stamped(body: bytes) -> bytes:
    """The JSON object ``body`` with its send time first: ``{"sent_at":<epoch s>,...``."""
    return b'{"sent_at":%.6f,' % time.time() + body[1:]


def sent_at(payload: bytes) -> float:
    return float(payload[11:payload.index(b",", 11)])


def publisher(args, names: List[str], files: Dict[str, Dict[str, str]], port,
              start_at: float, out: mp.Queue) -> None:
    """One process drives several devices (paho client each) on a shared 10 Hz clock."""
    sent = {n: {"mask": 0, "stats": 0, "status": 0, "retained": 0} for n in names}
    bytes_sent = 0
    lock = threading.Lock()
    clients = {}
    # Never hold our lock around client.publish(): paho calls on_publish holding its own.
    kinds: Dict[str, Dict[int, str]] = {n: {} for n in names}
    acks: Dict[str, Dict[int, int]] = {n: {} for n in names}
    for name in names:
        dev_port = port[name] if isinstance(port, dict) else port
        client = _client(Identity("127.0.0.1", dev_port, client_id=name, **files[name]))

        def on_publish(c, userdata, mid, reason, props, name=name):
            with lock:
                acks[name][mid] = reason.value
        client.on_publish = on_publish
        client.connect("127.0.0.1", dev_port, keepalive=30)
        client.loop_start()
        clients[name] = client
    payload_sizes = {"mask": len(mask_payload("x", 1)), "stats": len(stats_payload("x", 1))}
    masks = [mask_payload(names[0], i) for i in range(30)]  # pre-encoded, reused per device

    def publish(name, kind, topic, body, retain=False):
        nonlocal bytes_sent
        qos = args.mask_qos if kind == "mask" else 1
        body = stamped(body)
        info = clients[name].publish(topic, body, qos=qos, retain=retain)
        kinds[name][info.mid] = kind  # mids do not wrap: < 65535 messages per client
        sent[name][kind] += 1
        bytes_sent += len(body)

    while time.time() < start_at:
        time.sleep(0.05)
    for name in names:
        publish(name, "status", f"segedge/{name}/status",
                json.dumps({"state": "online", "device": name, "ts": time.time()}).encode(), True)
    burst_s = None
    if args.retained:  # what an agent sends on (re)connect: states, settings, discovery
        body = json.dumps({"state": "OFF", "pad": "x" * 700}).encode()
        t0 = time.monotonic()
        for i in range(args.retained):
            for name in names:
                publish(name, "retained", f"segedge/{name}/f{i}/state", body, True)

        def all_acked():
            with lock:
                return all(sum(1 for mid, kind in kinds[n].items() if kind == "retained"
                               and mid in acks[n]) == args.retained for n in names)
        while not all_acked() and time.monotonic() - t0 < 120:
            time.sleep(0.01)
        burst_s = round(time.monotonic() - t0, 2) if all_acked() else None
    tick, seq = 1.0 / args.rate, 0
    t_end = start_at + args.duration
    next_t = time.monotonic()
    while time.time() < t_end:
        seq += 1
        for name in names:
            publish(name, "mask", f"segedge/{name}/mask", masks[seq % len(masks)])
            if seq % int(args.rate * args.stats_interval) == 0:
                publish(name, "stats", f"segedge/{name}/stats", stats_payload(name, seq))
        next_t += tick
        time.sleep(max(0.0, next_t - time.monotonic()))
    behind = max(0.0, time.monotonic() - next_t)
    time.sleep(args.drain)
    with lock:
        acked = {n: {"mask": 0, "stats": 0, "status": 0, "retained": 0} for n in names}
        for name in names:
            for mid, reason in acks[name].items():
                if reason < 128 and mid in kinds[name]:  # QoS 0: on_publish once sent
                    acked[name][kinds[name][mid]] += 1
    for client in clients.values():
        client.disconnect()
        client.loop_stop()
    out.put({"acked": acked, "sent": sent, "bytes_sent": bytes_sent, "burst_s": burst_s,
             "payload_bytes": payload_sizes, "behind_s": behind})


def subscriber(name: str, files: Dict[str, str], port: int, counts: Dict, lock,
               latencies: Dict[str, List[float]] = None) -> object:
    def on_message(client, userdata, msg):
        now = time.time()
        parts = msg.topic.split("/")
        with lock:
            counts.setdefault(parts[1], {}).setdefault(parts[2], 0)
            counts[parts[1]][parts[2]] += 1
            if latencies is not None and parts[2] in ("mask", "stats"):
                with contextlib.suppress(ValueError):
                    latencies.setdefault(parts[2], []).append(now - sent_at(msg.payload))
    client = _client(Identity("127.0.0.1", port, client_id=name, **files), on_message)
    client.on_connect = lambda c, u, f, r, p: c.subscribe("segedge/#", qos=1)
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    return client


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--devices", type=int, default=50, help="devices (per site with --sites)")
    parser.add_argument("--sites", type=int, default=0,
                        help="site brokers bridged to a central one (0: one broker)")
    parser.add_argument("--subscribers", type=int, default=2)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=10.0, help="masks per second per device")
    parser.add_argument("--mask-qos", type=int, choices=(0, 1), default=1,
                        help="QoS of the masks (the agent's default mqtt.qos_mask is 0); "
                             "stats and status are always QoS 1")
    parser.add_argument("--retained", type=int, default=0,
                        help="retained QoS 1 messages (~750 bytes) each device sends first, "
                             "as an agent does on connect; their time to be acknowledged "
                             "is reported (retained_burst_s)")
    parser.add_argument("--stats-interval", type=float, default=5.0)
    parser.add_argument("--processes", type=int, default=2, help="publisher processes")
    parser.add_argument("--drain", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=ROOT / "runs/bench/broker-fleet.json")
    parser.add_argument("--set", action="append", default=[], metavar="VAR=YAML",
                        help="a role variable over its default, e.g. "
                             "segedge_broker_autosave_on_changes=false (repeatable)")
    args = parser.parse_args(argv)
    import yaml

    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        overrides[name] = yaml.safe_load(value)
    subs = [f"dash-{i}" for i in range(args.subscribers)]
    work = Path(tempfile.mkdtemp(prefix="segedge-bench-broker-"))
    if args.sites:
        broker, tiers, devices, port_of = start_sites(args, work, subs, overrides)
    else:
        devices = [f"cam-{i:03d}" for i in range(args.devices)]
        broker = LocalBroker(work, free_port(), "certificate", devices, subs, [],
                             overrides=overrides).start()
        tiers, port_of = {"broker": broker}, broker.port
    persistence = [line for line in broker.conf.read_text().splitlines()
                   if line.startswith(("persistence ", "autosave"))]
    files = {n: {k: v for k, v in broker.identity_files(n).items()} for n in devices + subs}
    lock = threading.Lock()
    sub_counts = [dict() for _ in subs]
    latencies: Dict[str, List[float]] = {}
    sub_clients = [subscriber(s, files[s], broker.port, sub_counts[i], lock,
                              latencies if i == 0 else None)
                   for i, s in enumerate(subs)]
    time.sleep(1.0)
    start_at = time.time() + 3.0 + len(devices) * 0.02
    queue: mp.Queue = mp.Queue()
    chunks = [devices[i::args.processes] for i in range(args.processes)]
    procs = [mp.Process(target=publisher, args=(args, c, files, port_of, start_at, queue))
             for c in chunks]
    for p in procs:
        p.start()
    samples = []
    cpu0, t0 = None, None
    while any(p.is_alive() for p in procs) and queue.qsize() < len(procs):
        now = time.time()
        cpu = cpu_seconds(broker.proc.pid)
        if now >= start_at and cpu0 is None:
            cpu0, t0 = cpu, now
        with lock:
            received = sum(sum(v.values()) for c in sub_counts for v in c.values())
        samples.append({"t": now - start_at, "cpu_s": cpu, "rss_kb": rss_kb(broker.proc.pid),
                        "received": received,
                        "tiers": {n: [cpu_seconds(b.proc.pid), rss_kb(b.proc.pid)]
                                  for n, b in tiers.items()}})
        time.sleep(1.0)
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    cpu1, t1 = cpu_seconds(broker.proc.pid), time.time()
    for c in sub_clients:
        c.disconnect()
        c.loop_stop()
    for b in tiers.values():
        b.stop()
    acked = {k: v for r in results for k, v in r["acked"].items()}
    sent = {k: v for r in results for k, v in r["sent"].items()}
    lost = {}
    # masks cross a bridge at QoS 0 (the role's topic map): never counted as QoS 1 there
    qos1 = ("mask", "stats", "status") if args.mask_qos and not args.sites \
        else ("stats", "status")
    for i, s in enumerate(subs):
        lost[s] = sum(max(0, acked[d][k] - sub_counts[i].get(d, {}).get(k, 0))
                      for d in devices for k in qos1)
    total_acked = sum(sum(v.values()) for v in acked.values())
    total_sent = sum(sum(v.values()) for v in sent.values())
    window = [s for s in samples if 0 <= s["t"] <= args.duration]
    cpu_window = (window[-1]["cpu_s"] - window[0]["cpu_s"]) / max(1e-9, window[-1]["t"]
                                                                   - window[0]["t"]) \
        if len(window) > 1 else None
    report = {
        "what": "fan-in through Mosquitto with the segedge_broker role's configuration "
                "(TLS, client certificates, ACL, persistence), QoS 1, loopback",
        "host": {"cpus": mp.cpu_count(), "python": platform.python_version(),
                 "machine": platform.machine()},
        "command": "python benchmarks/bench_broker.py " + " ".join(
            argv if argv is not None else sys.argv[1:]),
        "role_overrides": overrides, "persistence": persistence,
        "devices": args.devices, "subscribers": args.subscribers, "mask_qos": args.mask_qos,
        "duration_s": args.duration, "mask_rate_hz": args.rate,
        "payload_bytes": results[0]["payload_bytes"],
        "published": total_sent, "acknowledged": total_acked,
        "delivered_per_subscriber": {s: sum(sum(v.values()) for v in sub_counts[i].values())
                                     for i, s in enumerate(subs)},
        "lost_qos1_per_subscriber": lost,
        "publish_rate_msg_s": round(total_acked / args.duration, 1),
        "delivery_rate_msg_s": round(sum(sum(sum(v.values()) for v in c.values())
                                         for c in sub_counts) / args.duration, 1),
        "ingress_mbit_s": round(sum(r["bytes_sent"] for r in results) * 8 / args.duration / 1e6,
                                2),
        "broker_cpu_percent_of_one_core": round(100 * cpu_window, 1) if cpu_window else None,
        "broker_cpu_percent_whole_run": round(100 * (cpu1 - cpu0) / max(1e-9, t1 - t0), 1)
        if cpu0 is not None else None,
        "broker_rss_mb_peak": round(max(s["rss_kb"] for s in samples) / 1024, 1),
        "publishers_behind_schedule_s": max(r["behind_s"] for r in results),
        "retained_per_device": args.retained,
        "sites": args.sites,
        "masks_delivered_share_per_subscriber": {
            s: round(sum(sub_counts[i].get(d, {}).get("mask", 0) for d in devices)
                     / max(1, sum(acked[d]["mask"] for d in devices)), 4)
            for i, s in enumerate(subs)},
        "latency_ms_first_subscriber": {
            kind: {"n": len(v), **{f"p{q}": round(1000 * percentile(v, q), 1)
                                   for q in (50, 90, 99)}, "max": round(1000 * max(v), 1)}
            for kind, v in latencies.items() if v},
        "tiers": tier_figures(samples, args.duration),
        "retained_burst_s": None if not args.retained or any(
            r["burst_s"] is None for r in results) else max(r["burst_s"] for r in results),
        "samples": samples,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    chart(report, args.out.with_suffix(".png"))
    summary = {k: v for k, v in report.items() if k != "samples"}
    print(json.dumps(summary, indent=1))
    return report


def percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def tier_figures(samples: List[dict], duration: float) -> Dict[str, dict]:
    """CPU (% of one core over the publishing window) and peak RSS of each broker."""
    window = [s for s in samples if 0 <= s["t"] <= duration]
    out = {}
    for name in samples[0]["tiers"] if samples else []:
        cpu = None
        if len(window) > 1:
            cpu = round(100 * (window[-1]["tiers"][name][0] - window[0]["tiers"][name][0])
                        / max(1e-9, window[-1]["t"] - window[0]["t"]), 1)
        out[name] = {"cpu_percent_of_one_core": cpu,
                     "rss_mb_peak": round(max(s["tiers"][name][1] for s in samples) / 1024, 1)}
    return out


def start_sites(args, work: Path, subs: List[str], overrides: dict):
    """A central broker (the subscribers' identities, the bridges) and ``args.sites`` site
    brokers of ``args.devices`` devices each, bridged as the role plans it."""
    sites = [f"site-{chr(97 + k)}" for k in range(args.sites)]
    site_devices = {s: [f"{s[-1]}-cam-{i:03d}" for i in range(args.devices)] for s in sites}
    devices = [d for s in sites for d in site_devices[s]]
    fleet = [{"host": d, "id": d, "cameras": [], "senders": []} for d in devices]
    site_of = {d: s for s in sites for d in site_devices[s]}
    inventory = [{"host": "central", "site": "", "central": ""}] + [
        {"host": f"broker-{s}", "site": s, "central": ""} for s in sites]
    pki = work / "pki"
    plan = site_plan(fleet, site_of, inventory, "central")
    central = LocalBroker(work / "central", free_port(), "certificate", [], subs, [],
                          overrides=overrides, bridges=plan["bridges"], pki_dir=pki,
                          name="central").start()
    tiers = {"central": central}
    for s in sites:
        uplink = site_plan(fleet, site_of, inventory, f"broker-{s}")["uplink"]
        tiers[f"broker-{s}"] = LocalBroker(
            work / s, free_port(), "certificate", site_devices[s], [], [], overrides=overrides,
            uplink=dict(uplink, address=f"127.0.0.1:{central.port}"), pki_dir=pki,
            name=f"broker-{s}").start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(
            f" as bridge-{s} (" in central.log.read_text() for s in sites):
        time.sleep(0.2)
    port_of = {d: tiers[f"broker-{site_of[d]}"].port for d in devices}
    return central, tiers, devices, port_of


def chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = report["samples"]
    t = [x["t"] for x in s][1:]
    cpu = [100 * (b["cpu_s"] - a["cpu_s"]) / max(1e-9, b["t"] - a["t"]) for a, b in zip(s, s[1:])]
    rate = [(b["received"] - a["received"]) / max(1e-9, b["t"] - a["t"]) for a, b in zip(s, s[1:])]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    ax1.plot(t, rate)
    ax1.set_ylabel("delivered msg/s\n(all subscribers)")
    ax2.plot(t, cpu, color="tab:red")
    ax2.set_ylabel("broker CPU %\n(of one core)")
    ax3.plot([x["t"] for x in s], [x["rss_kb"] / 1024 for x in s], color="tab:green")
    ax3.set_ylabel("broker RSS MB")
    ax3.set_xlabel("s since the devices started")
    fig.suptitle(f"{report.get('sites') or 1} x {report['devices']} devices x"
                 f" {report['mask_rate_hz']:g} masks/s + stats + "
                 f"status, QoS 1, {report['subscribers']} subscribers; lost: "
                 f"{sum(report['lost_qos1_per_subscriber'].values())}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
