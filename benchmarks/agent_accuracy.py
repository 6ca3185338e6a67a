"""Accuracy through the agent's own path: a Pet split's images go in as camera frames, at
their own size, the real agent infers them (its graph resizes), masks come back over MQTT
and are scored against the trimaps; the bundle's offline figure (the build's evaluation of
the same IR) is printed beside it. The two agree when the build trains and evaluates on
the device's own resize rule (edge_agent.inference.preprocess.model_resize).

    python benchmarks/agent_accuracy.py --bundle demo/models/pets-mobile/3.2.0 \\
        --data PETS --split test --out bench-out/agent-accuracy

Needs the build extra (PIL, the Pet reader) and a broker: Mosquitto on a free loopback
port when installed, else the embedded one (tools/mqtt_broker.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from build_models import data as pets  # noqa: E402
from build_models.evaluate import confusion, metrics  # noqa: E402
from edge_agent.protocol.encoding import decode  # noqa: E402

DEVICE_ID = "accuracy"


def frames_dir(pairs: Sequence[pets.Pair], folder: Path) -> List[pets.Pair]:
    """Link the split's JPEGs as ``00001.jpg``... (the agent reads a folder in name order,
    so frame id i is pair i - 1); the pairs in that order."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, pair in enumerate(pairs):
        os.symlink(pair.image.resolve(), folder / f"{i + 1:05d}.jpg")
    return list(pairs)


def agent_config(frames: Path, bundle: Path, target: str, host: str, port: int,
                 protocol: str) -> str:
    return (f'device_id = "{DEVICE_ID}"\nlog_level = "INFO"\n'
            f'[source]\nuri = {json.dumps(str(frames.resolve()))}\nloop = false\nrealtime = false\n'
            f'fps = 1000.0\n'
            f'[model]\nbundle = {json.dumps(str(bundle.resolve()))}\ntarget = "{target}"\n'
            f'[output]\nmax_publish_fps = 0.0\nmask_resolution = "model"\n'
            f'mask_encoding = "png"\nstats_interval_s = 60.0\n'
            f'[commands]\nenabled = false\n'
            f'[mqtt]\nhost = {json.dumps(host)}\nport = {port}\nprotocol = "{protocol}"\n')


def run_agent(frames: Path, bundle: Path, target: str, host: str, port: int, protocol: str,
              expected: int, work: Path, timeout_s: float = 600.0) -> Dict[int, np.ndarray]:
    """Start the agent on ``frames`` and collect its masks by frame id until it exits."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    masks: Dict[int, np.ndarray] = {}
    lock = threading.Lock()
    subscribed = threading.Event()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        data = json.loads(msg.payload)
        with lock:
            masks[int(data["frame_id"])] = decode(data["mask"], data["encoding"])

    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                         protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311)
    client.on_message = on_message
    client.on_subscribe = lambda *_a: subscribed.set()
    client.on_connect = lambda c, *_a: c.subscribe(f"segedge/{DEVICE_ID}/mask", qos=1)
    client.connect(host, port)
    client.loop_start()
    if not subscribed.wait(10):
        raise SystemExit(f"agent_accuracy: no subscription at {host}:{port}")
    config = work / "agent.toml"
    config.write_text(agent_config(frames, bundle, target, host, port, protocol))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGEDGE_")}
    env["PYTHONPATH"] = str(ROOT)
    with open(work / "agent.log", "wb") as log:
        agent = subprocess.Popen([sys.executable, "-m", "edge_agent", "--config", str(config)],
                                 stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
    try:
        rc = agent.wait(timeout_s)
    except subprocess.TimeoutExpired:
        agent.kill()
        raise SystemExit(f"agent_accuracy: the agent ran past {timeout_s:.0f} s "
                         f"(log: {work / 'agent.log'})") from None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with lock:
            if len(masks) >= expected:
                break
        time.sleep(0.05)
    client.disconnect()
    client.loop_stop()
    if rc != 0:
        raise SystemExit(f"agent_accuracy: agent exited {rc} (log: {work / 'agent.log'})")
    return dict(masks)


def score(masks: Dict[int, np.ndarray], pairs: Sequence[pets.Pair], size_hw: Sequence[int],
          label_mode: str = "binary") -> Dict[str, Any]:
    """Metrics of the masks (frame id i = pair i - 1) against nearest-resized trimaps, the
    build's own rule; missing masks are reported, not scored."""
    classes = len(pets.CLASSES[label_mode])
    cm = np.zeros((classes, classes), np.int64)
    missing = []
    for i, pair in enumerate(pairs):
        mask = masks.get(i + 1)
        if mask is None:
            missing.append(pair.name)
            continue
        image, truth = pets.load_pair(pair, label_mode)
        _, truth = pets.resize_pair(image, truth, int(size_hw[0]))
        if mask.shape != truth.shape:
            raise SystemExit(f"agent_accuracy: mask {mask.shape} for {pair.name}, expected "
                             f"{truth.shape}")
        cm += confusion(mask, truth, classes)
    return {**metrics(cm), "images": len(pairs) - len(missing), "missing": missing}


def offline(bundle: Path, target: str) -> Dict[str, Any]:
    """The bundle's own figure for the target's precision (the build's evaluation)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    precision = manifest["targets"][target]["precision"]
    figures = manifest.get("evaluation", {}).get("metrics", {}).get(precision, {})
    return {"precision": precision, **figures}


def measure(bundle: Path, data: Path, split: str, target: str, work: Path,
            broker: Optional[str] = None) -> Dict[str, Any]:
    from tools.demo import open_broker

    bundle = bundle.resolve()
    pairs = pets.scan_split(data, split).pairs
    frames_dir(pairs, work / "frames")
    size = json.loads((bundle / "manifest.json").read_text())["input"]["shape"][2:4]
    own = open_broker(broker or "", "", work)
    try:
        t0 = time.monotonic()
        masks = run_agent(work / "frames", bundle, target, own.host, own.port, own.protocol,
                          len(pairs), work)
        seconds = time.monotonic() - t0
    finally:
        own.stop()
    agent = score(masks, pairs, size)
    book = offline(bundle, target)
    return {"bundle": str(bundle), "split": split, "target": target, "broker": own.name,
            "agent": agent, "offline": book, "agent_seconds": round(seconds, 1),
            "difference": {k: round(agent[k] - book[k], 4)
                           for k in ("dice", "fg_iou", "fg_dice") if k in book}}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, type=Path, help="bundle version folder")
    p.add_argument("--data", required=True, type=Path, help="Oxford-IIIT Pet folder")
    p.add_argument("--split", default="test")
    p.add_argument("--target", default="cpu")
    p.add_argument("--broker", default="", help="HOST:PORT of a running broker")
    p.add_argument("--out", type=Path, default=Path("bench-out/agent-accuracy"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=args.out))  # frames, config, agent.log
    result = measure(args.bundle, args.data, args.split, args.target, work, args.broker)
    (args.out / "agent-accuracy.json").write_text(json.dumps(result, indent=1) + "\n")
    a, o = result["agent"], result["offline"]
    print(f"{result['split']} split, {a['images']} images, target {result['target']} "
          f"({o.get('precision')}), {result['agent_seconds']} s through the agent")
    for key, name in (("fg_iou", "pet IoU"), ("fg_dice", "pet Dice"),
                      ("dice", "pixel accuracy")):
        if key in o:
            print(f"  {name:15s} agent {a[key]:.4f}  offline {o[key]:.4f}  "
                  f"difference {a[key] - o[key]:+.4f}")
    if a["missing"]:
        print(f"  {len(a['missing'])} frames got no mask: {', '.join(a['missing'][:5])}")
    return 1 if a["missing"] else 0


if __name__ == "__main__":
    sys.exit(main())
