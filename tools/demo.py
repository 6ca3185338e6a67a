"""The README demo: a broker, the agent on the demo clip, the live subscriber.

    bash scripts/demo.sh [--duration 30] [--out demo-out] [--broker HOST:PORT]

The broker is, in order: the one named by ``--broker``; Mosquitto on a free loopback
port when it is installed; else the small embedded broker of ``tools/mqtt_broker.py``
(no root, no packages). Everything else runs on 127.0.0.1 and stops cleanly at the end
(or on Ctrl-C, which reaches the demo only: it says it was stopped, then stops the agent
and the broker in that order); the summary counts what the subscriber really received
and the agent's final stats (published at its clean stop). On a broker it did not start
(``--broker``) it removes the retained messages the agent left there.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from tools.broker import Broker, mosquitto_binary

ROOT = Path(__file__).resolve().parents[1]
DEVICE_ID = "demo-cam"


def find_bundle(models: Path) -> Optional[Path]:
    """The newest bundle version dir (by manifest ``created``) under demo/models/<name>/."""
    found = []
    for manifest in models.glob("*/*/manifest.json"):
        try:
            created = json.loads(manifest.read_text()).get("created", "")
        except (OSError, ValueError):
            continue
        found.append((created, manifest.stat().st_mtime, manifest.parent))
    return max(found)[2] if found else None


@dataclass
class DemoBroker:
    host: str
    port: int
    name: str  # what the summary says was used
    protocol: str  # MQTT protocol the agent and subscriber speak to it
    stop: Callable[[], None]


def parse_host_port(text: str) -> tuple:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(f"demo: --broker {text!r}: expected HOST:PORT, e.g. 127.0.0.1:1883")
    return host.strip("[]"), int(port)


def open_broker(spec: str, protocol: str, work: Path, embedded: bool = False) -> DemoBroker:
    """The broker the demo publishes to (see the module docstring for the order)."""
    if spec:
        host, port = parse_host_port(spec)
        try:
            socket.create_connection((host, port), timeout=5).close()
        except OSError as exc:
            raise SystemExit(f"demo: --broker {host}:{port}: cannot connect ({exc})") from None
        return DemoBroker(host, port, "existing broker (--broker)", protocol or "5",
                          lambda: None)
    why = "as asked" if embedded else "Mosquitto not found"
    if mosquitto_binary() and not embedded:
        try:
            broker = Broker(work / "mosquitto").start()
            return DemoBroker(broker.host, broker.port, "Mosquitto (" + str(mosquitto_binary())
                              + ")", protocol or "5", broker.stop)
        except RuntimeError as exc:
            print(f"demo: Mosquitto did not start ({exc}); using the embedded broker")
            why = "Mosquitto did not start"
    from tools.mqtt_broker import MqttBroker

    own = MqttBroker("127.0.0.1", 0).start()
    return DemoBroker(own.host, own.port,
                      f"embedded broker (tools/mqtt_broker.py, MQTT 3.1.1; {why})", "3.1.1",
                      own.stop)


def agent_config(clip: Path, bundle: Path, broker: DemoBroker, target: str,
                 devices: List[str]) -> str:
    return (f'device_id = "{DEVICE_ID}"\n[source]\nuri = {json.dumps(str(clip))}\nloop = true\n'
            f'[model]\nbundle = {json.dumps(str(bundle))}\ntarget = "{target}"\n'
            f"devices = {json.dumps(devices)}\n"
            f'[output]\nmax_publish_fps = 10.0\nstats_interval_s = 2.0\nframe_every = 5\n'
            f'mask_resolution = "frame"\n'
            f'[mqtt]\nhost = {json.dumps(broker.host)}\nport = {broker.port}\n'
            f'protocol = "{broker.protocol}"\n')


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    from edge_agent import __version__

    p = argparse.ArgumentParser(prog="segedge-demo", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--version", action="version", version=f"segedge-demo {__version__}")
    p.add_argument("--duration", type=float, default=30.0, help="seconds (0 = until Ctrl-C)")
    p.add_argument("--out", default="demo-out", help="folder for masks, overlays and logs")
    p.add_argument("--broker", default="", metavar="HOST:PORT",
                   help="use this running broker (anonymous) instead of starting one")
    p.add_argument("--embedded-broker", action="store_true",
                   help="use the embedded broker even where Mosquitto is installed")
    p.add_argument("--protocol", choices=("5", "3.1.1"), default="",
                   help="MQTT protocol (empty: 5, or 3.1.1 for the embedded broker)")
    p.add_argument("--snapshot", default="", metavar="PATH",
                   help="also copy one overlay here (the README's: docs/img/overlay.jpg)")
    p.add_argument("--snapshot-frame", type=int, default=96,
                   help="the snapshot is the first saved overlay from this frame id on")
    p.add_argument("--clip", default=str(ROOT / "demo" / "clip.mp4"), help="video to run on")
    p.add_argument("--bundle", default="", help="bundle version dir (empty: newest in demo/)")
    p.add_argument("--target", default="cpu", help="bundle target")
    p.add_argument("--device", default="CPU", help="OpenVINO devices, comma separated")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from edge_agent.client.subscriber import Subscriber

    clip = Path(args.clip)
    bundle = Path(args.bundle) if args.bundle else find_bundle(ROOT / "demo" / "models")
    if bundle is None or not clip.is_file():
        print(f"demo: {clip if not clip.is_file() else ROOT / 'demo' / 'models'}: not found "
              "(the demo clip and bundle are committed under demo/; pass --clip/--bundle)",
              file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="segedge-demo-"))
    stop = threading.Event()
    stopped_by: List[str] = []

    def on_signal(signum, _frame) -> None:
        if not stop.is_set():
            stopped_by.append("Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    broker: Optional[DemoBroker] = None
    agent: Optional[subprocess.Popen] = None
    code: Optional[int] = None
    agent_log = out / "agent.log"
    summary: Dict[str, Any] = {}
    sub_stop = threading.Event()
    refused = threading.Event()
    t0 = time.monotonic()
    try:
        broker = open_broker(args.broker, args.protocol, work, args.embedded_broker)
        config = work / "agent.toml"
        config.write_text(agent_config(clip, bundle, broker, args.target,
                                       args.device.split(",")))
        print(f"demo: broker: {broker.name} on {broker.host}:{broker.port}, MQTT "
              f"{broker.protocol}")
        print(f"demo: bundle {bundle}, clip {clip}")
        print(f"demo: agent log {agent_log}; Ctrl-C stops", flush=True)
        sub = Subscriber(broker.host, broker.port, device=DEVICE_ID, out=str(out / "masks"),
                         protocol=broker.protocol)
        listener = threading.Thread(target=listen, args=(sub, sub_stop, summary, refused, stop),
                                    name="subscriber")
        listener.start()
        with open(agent_log, "wb") as log:
            agent = subprocess.Popen([sys.executable, "-m", "edge_agent", "--config",
                                      str(config)], stdout=log, stderr=subprocess.STDOUT,
                                     cwd=str(ROOT), start_new_session=True)  # no Ctrl-C
        deadline = t0 + args.duration if args.duration > 0 else None
        while not stop.wait(0.2) and agent.poll() is None:
            if deadline and time.monotonic() >= deadline:
                break
        if refused.is_set():  # the broker took the TCP connection but not the subscriber
            raise SystemExit(f"demo: subscriber: {refused.error}")
        if stopped_by:
            print(f"\ndemo: stopped ({stopped_by[0]}); stopping the agent", flush=True)
        code = stop_agent(agent)
        agent = None
        time.sleep(0.5)  # the last masks and the final stats in flight on loopback
        sub_stop.set()
        listener.join(10)
        if args.broker:  # not our broker: leave nothing retained on it
            removed = clear_retained(broker, f"segedge/{DEVICE_ID}/#")
            print(f"demo: removed {removed} retained message(s) of {DEVICE_ID} from "
                  f"{broker.host}:{broker.port}")
    finally:
        if agent is not None:
            code = stop_agent(agent)
        sub_stop.set()
        if broker is not None:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    result = report(summary.get(DEVICE_ID, {}), f"{broker.name} on {broker.host}:{broker.port},"
                    f" MQTT {broker.protocol}" if broker else "",
                    time.monotonic() - t0, code, out, agent_log,
                    stopped_by[0] if stopped_by else "")
    if args.snapshot and not snapshot(out / "masks" / DEVICE_ID, args.snapshot_frame,
                                      Path(args.snapshot)):
        return 1
    return result


def listen(sub: Any, sub_stop: threading.Event, summary: Dict[str, Any],
           refused: threading.Event, stop: threading.Event) -> None:
    """The subscriber's run, its summary kept; a broker that refuses it sets ``refused``
    (with the one-line reason in ``refused.error``) and stops the demo."""
    from edge_agent.protocol.connect import BrokerError

    try:
        summary.update(sub.run(0, sub_stop))
    except BrokerError as exc:
        refused.error = str(exc)  # type: ignore[attr-defined]
        refused.set()
        stop.set()


def snapshot(folder: Path, first: int, dest: Path) -> bool:
    """Copy the first overlay with frame id >= ``first`` to ``dest`` (JPEG, quality 85)."""
    import cv2

    found = [p for p in sorted(folder.glob("overlay_*.jpg")) if int(p.stem[8:]) >= first]
    image = cv2.imread(str(found[0])) if found else None
    if image is None:
        print(f"demo: no overlay from frame {first} on in {folder}; run longer", file=sys.stderr)
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(dest), image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(f"demo: snapshot {found[0].name} -> {dest}")
    return True


def clear_retained(broker: DemoBroker, topic_filter: str, settle_s: float = 1.0) -> int:
    """Publish an empty retained message on every topic under ``topic_filter`` that holds
    a retained one (the agent's status, its settings states); return how many."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edge_agent.protocol import connect

    topics: List[str] = []
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                         protocol=mqtt.MQTTv5 if broker.protocol == "5" else mqtt.MQTTv311)
    client.on_message = lambda c, u, msg: topics.append(msg.topic) if msg.retain \
        and msg.payload else None
    try:
        connect.connect(client, broker.host, broker.port)
    except connect.BrokerError as exc:
        print(f"demo: retained messages not removed: {exc}", file=sys.stderr)
        return 0
    client.subscribe(topic_filter, qos=1)
    time.sleep(settle_s)  # retained messages arrive at once after the SUBACK
    infos = [client.publish(topic, b"", qos=1, retain=True) for topic in sorted(set(topics))]
    for info in infos:
        info.wait_for_publish(5)
    client.disconnect()
    client.loop_stop()
    return len(infos)


def stop_agent(agent: subprocess.Popen) -> int:
    if agent.poll() is None:
        agent.send_signal(signal.SIGTERM)
    try:
        return agent.wait(15)
    except subprocess.TimeoutExpired:
        agent.kill()
        return agent.wait()


def report(view: Dict[str, Any], broker: str, elapsed: float, code: Optional[int], out: Path,
           agent_log: Path, stopped_by: str = "") -> int:
    """Print what the subscriber received and the agent's final stats (its last ones,
    labelled as such, when it did not stop cleanly)."""
    stats = view.get("stats") or {}
    frames, fps = stats.get("frames", {}), stats.get("fps", {})
    lat = view.get("latency_ms") or {}
    masks = int(view.get("masks", 0))
    overlays = sorted((out / "masks").glob("*/overlay_*"))
    print("\n=== segedge demo summary ===")
    print(f"broker: {broker}")
    print(f"{'stopped by ' + stopped_by + ' after' if stopped_by else 'ran'} {elapsed:.0f}s; "
          f"agent exit code {code}"
          f"{'' if code == 0 else f' (see {agent_log})'}")
    print(f"received: {masks} masks (frame ids {view.get('first_frame')}.."
          f"{view.get('last_frame')}), {view.get('bad', 0)} undecodable; latency "
          f"capture->publish of the received masks p50 {lat.get('p50')} ms, "
          f"p95 {lat.get('p95')} ms")
    if stats:
        final = "final" if code == 0 else "last"  # a clean stop publishes final stats
        print(f"agent's {final} stats (uptime {stats.get('uptime_s')} s): "
              f"{frames.get('captured')} "
              f"frames captured, {frames.get('inferred')} inferred, {frames.get('dropped')} "
              f"dropped, {frames.get('published')} published on {stats.get('device')} "
              f"({stats.get('precision')}, {stats.get('inference_precision')}); fps capture "
              f"{fps.get('capture')}, inference {fps.get('inference')}")
    print(f"overlays: {len(overlays)} files in {out / 'masks'}")
    return 0 if code == 0 and masks else 1


if __name__ == "__main__":
    sys.exit(main())
