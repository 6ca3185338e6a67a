"""The README demo: embedded Mosquitto, the agent on the demo clip, the live subscriber.

    bash scripts/demo.sh [--duration 30] [--out demo-out]

Everything runs on 127.0.0.1 and stops cleanly at the end (or on Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]


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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_broker(workdir: Path) -> Tuple[subprocess.Popen, int]:
    binary = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if not binary:
        raise SystemExit("demo: mosquitto not found; install it with "
                         "'sudo apt-get install mosquitto' (or: sudo bash scripts/setup.sh agent)")
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(("user root\n" if os.geteuid() == 0 else "") +
                    f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    f"log_dest file {workdir / 'mosquitto.log'}\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"demo: mosquitto did not start (see {workdir / 'mosquitto.log'})")


def fallback_inputs(workdir: Path) -> Tuple[Path, Path]:
    """A generated clip and the test suite's tiny bundle, until demo/ assets land."""
    import cv2
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from tests.helpers.tiny_bundle import make_tiny_bundle

    bundle = make_tiny_bundle(workdir / "models")
    clip = workdir / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 15, (320, 240))
    for i in range(150):
        img = np.zeros((240, 320, 3), np.uint8)
        img[:] = (180, 60, 30)
        x = int(160 + 110 * np.sin(i / 12))
        cv2.circle(img, (x, 120), 50, (40, 40, 230), -1)
        writer.write(img)
    writer.release()
    return clip, bundle


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="segedge-demo", description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=30.0, help="seconds (0 = until Ctrl-C)")
    p.add_argument("--out", default="demo-out", help="folder for masks, overlays and logs")
    p.add_argument("--clip", default=str(ROOT / "demo" / "clip.mp4"))
    p.add_argument("--bundle", default="", help="bundle version dir (default: newest in demo/)")
    p.add_argument("--target", default="cpu")
    p.add_argument("--device", default="CPU", help="OpenVINO devices, comma separated")
    args = p.parse_args(argv)

    from .subscriber import Subscriber

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="segedge-demo-"))
    clip = Path(args.clip)
    bundle = Path(args.bundle) if args.bundle else find_bundle(ROOT / "demo" / "models")
    if bundle is None or not clip.exists():
        print("demo: demo/clip.mp4 or demo/models/ not found; using a generated clip and the "
              "tiny test model")
        gen_clip, gen_bundle = fallback_inputs(work)
        clip = clip if clip.exists() else gen_clip
        bundle = bundle or gen_bundle
    broker, port = start_broker(work)
    device_id = "demo-cam"
    config = work / "agent.toml"
    config.write_text(
        f'device_id = "{device_id}"\n[source]\nuri = {json.dumps(str(clip))}\nloop = true\n'
        f'[model]\nbundle = {json.dumps(str(bundle))}\ntarget = "{args.target}"\n'
        f"devices = {json.dumps(args.device.split(','))}\n"
        f'[output]\nmax_publish_fps = 10.0\nstats_interval_s = 2.0\nframe_every = 5\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n')
    agent_log = out / "agent.log"
    print(f"demo: broker 127.0.0.1:{port}, bundle {bundle}, clip {clip}")
    print(f"demo: agent log {agent_log}; Ctrl-C stops")
    with open(agent_log, "wb") as log:
        agent = subprocess.Popen([sys.executable, "-m", "edge_agent", "--config", str(config)],
                                 stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    watcher = threading.Thread(target=lambda: (agent.wait(), stop.set()), daemon=True)
    watcher.start()
    sub = Subscriber("127.0.0.1", port, device=device_id, out=str(out / "masks"))
    t0 = time.monotonic()
    summary: Dict[str, Any] = {}
    try:
        summary = sub.run(args.duration, stop)
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
        try:
            code = agent.wait(15)
        except subprocess.TimeoutExpired:
            agent.kill()
            code = agent.wait()
        broker.terminate()
        broker.wait(5)
        shutil.rmtree(work, ignore_errors=True)
    return report(summary.get(device_id, {}), time.monotonic() - t0, code, out, agent_log)


def report(view: Dict[str, Any], elapsed: float, code: int, out: Path, agent_log: Path) -> int:
    stats = view.get("stats") or {}
    frames, fps, lat = stats.get("frames", {}), stats.get("fps", {}), stats.get("latency_ms", {})
    overlays = sorted((out / "masks").glob("*/overlay_*"))
    print("\n=== segedge demo summary ===")
    print(f"ran {elapsed:.0f}s; agent exit code {code}"
          f"{'' if code == 0 else f' (see {agent_log})'}")
    print(f"masks received: {view.get('masks', 0)} (frame ids {view.get('first_frame')}.."
          f"{view.get('last_frame')}), undecodable: {view.get('bad', 0)}")
    if stats:
        print(f"agent: {frames.get('captured')} frames captured, {frames.get('inferred')} "
              f"inferred, {frames.get('dropped')} dropped, {frames.get('published')} published "
              f"on {stats.get('device')} ({stats.get('precision')}, "
              f"{stats.get('inference_precision')})")
        print(f"fps: capture {fps.get('capture')}, inference {fps.get('inference')}, publish "
              f"{fps.get('publish')}; latency capture->publish p50 {lat.get('p50')} ms, "
              f"p95 {lat.get('p95')} ms, p99 {lat.get('p99')} ms")
    print(f"overlays: {len(overlays)} files in {out / 'masks'}")
    return 0 if code == 0 and view.get("masks") else 1


if __name__ == "__main__":
    sys.exit(main())
