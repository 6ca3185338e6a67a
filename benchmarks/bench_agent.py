"""The agent end to end (its own stats on a real broker) vs benchmark_app on the same IR.

    python benchmarks/bench_agent.py --duration 20 --out runs/bench/agent.json
    python benchmarks/bench_agent.py --bundle demo/models/pets/1.0.0 --clip demo/clip.mp4

The agent reads the clip at 1.5x benchmark_app's throughput (latest frame wins) with no
publish limit, so its inference fps is the pipeline's ceiling: capture + decode, preprocessing,
async inference, postprocessing, encoding and MQTT publish, all in one process.
``benchmark_app`` runs the same model file on the same device with the THROUGHPUT hint
(and then LATENCY, for the latency comparison). Prints the ratios; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.manifest import open_target  # noqa: E402
from tools.broker import Broker  # noqa: E402
from tools.demo import find_bundle  # noqa: E402


def run_agent(bundle: Path, target: str, device: str, clip: Path, duration: float,
              work: Path, encoding: str, source_fps: float) -> Dict[str, Any]:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    broker = Broker(work / "mosquitto").start()
    port = broker.port
    stats: List[Dict[str, Any]] = []
    got = threading.Event()

    def on_message(_c, _u, msg) -> None:
        stats.append(json.loads(msg.payload))
        got.set()

    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, *_: c.subscribe("bench/+/stats", qos=1)
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    config = work / "agent.toml"
    config.write_text(
        f'device_id = "bench"\nlog_level = "WARNING"\n'
        f'[source]\nuri = {json.dumps(str(clip))}\nloop = true\nfps = {source_fps:.1f}\n'
        f'[model]\nbundle = {json.dumps(str(bundle))}\ntarget = "{target}"\n'
        f'devices = ["{device}"]\n'
        f'[output]\nmax_publish_fps = 0.0\nstats_interval_s = 2.0\nmask_encoding = "{encoding}"\n'
        f'[mqtt]\nport = {port}\nprefix = "bench"\n')
    agent = subprocess.Popen([sys.executable, "-m", "edge_agent", "--config", str(config)],
                             cwd=str(ROOT))
    try:
        time.sleep(duration + 4.5)  # start-up + warm-up tick + the measured ticks
    finally:
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(20)
        client.loop_stop()
        broker.stop()
    ticks = [s for s in stats if s["uptime_s"] > 3.0 and s["latency_ms"]["count"]]
    if not ticks:
        raise SystemExit(f"no stats from the agent (exit {code})")

    def mean(path: str) -> float:
        a, b = path.split(".")
        return round(statistics.fmean(t[a][b] for t in ticks), 2)

    return {"exit_code": code, "ticks": len(ticks), "device": ticks[-1]["device"],
            "inference_precision": ticks[-1]["inference_precision"],
            "num_requests": ticks[-1]["num_requests"],
            "fps_capture": mean("fps.capture"), "fps_inference": mean("fps.inference"),
            "fps_publish": mean("fps.publish"),
            "latency_p50_ms": round(statistics.median(t["latency_ms"]["p50"] for t in ticks), 2),
            "latency_p95_ms": round(statistics.median(t["latency_ms"]["p95"] for t in ticks), 2),
            "latency_p99_ms": round(max(t["latency_ms"]["p99"] for t in ticks), 2),
            "cpu_percent": mean("process.cpu_percent"),
            "rss_mb": round(ticks[-1]["process"]["rss_bytes"] / 2**20, 1),
            "frames": ticks[-1]["frames"]}


def synthetic_bundle(root: Path, size: int = 256, width: int = 32, depth: int = 6) -> Path:
    """A conv net of realistic cost (no torch): ``depth`` 3x3 convs of ``width`` channels."""
    import datetime as dt

    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    from edge_agent import manifest as mf

    rng = np.random.default_rng(0)
    image = ops.parameter([1, 3, size, size], ov.Type.f32, name="image")
    x, cin = image, 3
    for _ in range(depth):
        w = (rng.standard_normal((width, cin, 3, 3)) * 0.05).astype(np.float32)
        x = ops.relu(ops.convolution(x, ops.constant(w), [1, 1], [1, 1], [1, 1], [1, 1]))
        cin = width
    w = (rng.standard_normal((2, cin, 1, 1)) * 0.05).astype(np.float32)
    logits = ops.convolution(x, ops.constant(w), [1, 1], [0, 0], [0, 0], [1, 1])
    logits.output(0).get_tensor().set_names({"logits"})
    bundle = root / "synthetic" / "1"
    (bundle / "cpu").mkdir(parents=True)
    ov.save_model(ov.Model([logits.output(0)], [image], "synthetic"), str(bundle / "cpu/model.xml"))
    files = [mf.file_entry(bundle, bundle / "cpu" / n) for n in ("model.xml", "model.bin")]
    mf.write_manifest(bundle, mf.Manifest(
        name="synthetic", version="1", created=dt.datetime.now(dt.timezone.utc).isoformat(),
        tools={"openvino": ov.get_version()}, source_checkpoint={"sha256": "0" * 64},
        model={"architecture": f"{depth}x conv3x3/{width}"},
        input=mf.TensorSpec("image", [1, 3, size, size], "f32"),
        output=mf.TensorSpec("logits", [1, 2, size, size], "f32", kind="logits"),
        classes=["background", "pet"], evaluation={},
        targets={"cpu": mf.TargetEntry("cpu", "CPU", "FP32", "openvino_ir", "cpu/model.xml",
                                       files, "2023.0", True)}, files=files))
    return bundle


def run_benchmark_app(model: Path, device: str, hint: str, seconds: int) -> Dict[str, Any]:
    exe = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    res = subprocess.run([exe, "-m", str(model), "-d", device, "-hint", hint, "-t", str(seconds)],
                         capture_output=True, text=True, timeout=seconds + 120)
    out = res.stdout + res.stderr
    fps = re.search(r"Throughput:\s*([\d.]+)\s*FPS", out)
    med = re.search(r"Median:\s*([\d.]+)\s*(ms|us)", out)
    if res.returncode != 0 or not fps:
        raise SystemExit(f"benchmark_app failed ({res.returncode}):\n{out[-2000:]}")
    return {"hint": hint, "fps": float(fps.group(1)),
            "median_latency_ms": (float(med.group(1)) / (1000 if med.group(2) == "us" else 1))
            if med else None}


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="", help="bundle version dir (default: newest in demo/)")
    p.add_argument("--synthetic", action="store_true",
                   help="use a generated 256x256 FP32 conv net instead of a bundle")
    p.add_argument("--target", default="cpu")
    p.add_argument("--device", default="CPU")
    p.add_argument("--clip", default=str(ROOT / "demo" / "clip.mp4"))
    p.add_argument("--duration", type=float, default=20.0, help="measured agent seconds")
    p.add_argument("--encoding", default="png", choices=("png", "rle"))
    p.add_argument("--source-fps", type=float, default=0.0,
                   help="clip read rate (0 = 1.5x benchmark_app's throughput)")
    p.add_argument("--out", default="runs/bench/agent.json")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="segedge-bench-"))
    try:
        bundle = Path(args.bundle) if args.bundle else (
            synthetic_bundle(work) if args.synthetic else find_bundle(ROOT / "demo" / "models"))
        clip = Path(args.clip)
        if bundle is None or not clip.is_file():
            raise SystemExit(f"no bundle under demo/models or no clip {clip}: pass --bundle/--clip")
        manifest, entry, model = open_target(bundle, args.target)
        seconds = max(5, int(args.duration / 2))
        bench_tp = run_benchmark_app(model, args.device, "throughput", seconds)
        bench_lat = run_benchmark_app(model, args.device, "latency", seconds)
        # feed 1.5x what the model can take: the agent is saturated, yet no CPU is burnt
        # decoding thousands of frames that would only be dropped
        source_fps = args.source_fps or min(1000.0, 1.5 * bench_tp["fps"])
        agent = run_agent(bundle, args.target, args.device, clip, args.duration, work,
                          args.encoding, source_fps)
        agent["source_fps"] = round(source_fps, 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "model": {"name": manifest.name, "version": manifest.version, "target": entry.name,
                  "precision": entry.precision, "input": manifest.input.shape},
        "clip": str(clip), "machine": {"cpu": platform.processor() or platform.machine(),
                                       "python": platform.python_version()},
        "agent": agent, "benchmark_app": {"throughput": bench_tp, "latency": bench_lat},
        "ratio_fps_agent_vs_benchmark_app": round(agent["fps_inference"] / bench_tp["fps"], 3),
        "ratio_p50_latency_agent_vs_benchmark_app": round(
            agent["latency_p50_ms"] / (bench_lat["median_latency_ms"] or float("nan")), 2),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"agent: {agent['fps_inference']} fps inferred ({agent['fps_publish']} published), "
          f"latency capture->publish p50 {agent['latency_p50_ms']} ms p95 "
          f"{agent['latency_p95_ms']} ms, CPU {agent['cpu_percent']}%")
    print(f"benchmark_app: {bench_tp['fps']} fps (throughput), median "
          f"{bench_lat['median_latency_ms']} ms (latency hint)")
    print(f"ratio agent/benchmark_app fps: {result['ratio_fps_agent_vs_benchmark_app']}; "
          f"written to {out}")
    return result


if __name__ == "__main__":
    main()
