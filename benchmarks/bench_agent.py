"""The agent end to end (its own stats on a real broker) vs its limit on the same IR and clip.

    python benchmarks/bench_agent.py --duration 10 --repeats 3 --out runs/bench/agent.json
    python benchmarks/bench_agent.py --bundle demo/models/pets/1.0.0 --clip demo/clip.mp4

Each repeat measures, back to back: ``benchmark_app`` (THROUGHPUT hint) on the model file;
the CPU cost of decoding the clip alone (the agent's own OpenCV reader, process CPU time
per frame); from them the decode-inclusive limit
``1 / (1/benchmark_app_fps + decode_cpu_s_per_frame / cores)``; and the agent reading the
clip at 1.1x that limit (latest frame wins) with no publish limit, its CPU per frame split by
stage (``EDGE_AGENT_STAGE_TIMES``, edge_agent/inference/stagetime.py). The agent's fps is
counted from its stats ticks' frame counters between the first tick past the warm-up and the
last one before the benchmark stops it (``summarise``): not a mean of tick rates, which let in
the interval of the start and the agent's last tick at shutdown. Then once: the agent
at a paced 30 fps camera (capture->publish p50) against ``benchmark_app``'s LATENCY-hint median.
``--compare DIR`` runs another checkout's agent in the same repeats (interleaved A/B).
Prints the ratios; writes JSON and a chart next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
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

from edge_agent.bundle.manifest import open_target  # noqa: E402
from tools.broker import Broker  # noqa: E402
from tools.demo import find_bundle  # noqa: E402


def run_agent(bundle: Path, target: str, device: str, clip: Path, duration: float,
              work: Path, encoding: str, source_fps: float, root: Path = ROOT,
              resolution: str = "model", env_extra: Optional[Dict[str, str]] = None
              ) -> Dict[str, Any]:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    broker = Broker(work / "mosquitto").start()
    port = broker.port
    stats: List[Dict[str, Any]] = []
    got = threading.Event()

    stage_file = work / "stages.json"
    stage_file.unlink(missing_ok=True)

    def on_message(_c, _u, msg) -> None:
        tick = json.loads(msg.payload)
        tick["_received_mono"] = time.monotonic()
        try:  # the agent's latest stage snapshot next to its stats tick
            tick["_stages"] = json.loads(stage_file.read_text())
        except (OSError, ValueError):
            tick["_stages"] = None
        stats.append(tick)
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
        f'mask_resolution = "{resolution}"\n'
        f'[mqtt]\nport = {port}\nprefix = "bench"\n')
    env = dict(os.environ, PYTHONPATH=str(root), EDGE_AGENT_STAGE_TIMES=str(stage_file),
               **(env_extra or {}))
    agent = subprocess.Popen([sys.executable, "-m", "edge_agent", "--config", str(config)],
                             cwd=str(root), env=env)
    try:
        time.sleep(duration + 4.5)  # start-up + warm-up tick + the measured ticks
    finally:
        stopped_at = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(20)
        client.loop_stop()
        broker.stop()
    return summarise(stats, stopped_at, code)


def summarise(stats: List[Dict[str, Any]], stopped_at: float, code: int) -> Dict[str, Any]:
    """The agent's figures from its stats ticks (``measured_ticks``): rates by the counters
    from the baseline tick to the last one, means and medians over the ticks after it."""
    ticks = measured_ticks(stats, stopped_at)
    if len(ticks) < 2:
        raise SystemExit(f"too few stats ticks from the agent to measure (exit {code}; "
                         f"{len(stats)} ticks, {len(ticks)} past the warm-up)")
    base, steady = ticks[0], ticks[1:]

    def mean(path: str) -> float:
        a, b = path.split(".")
        return round(statistics.fmean(t[a][b] for t in steady), 2)

    return {"exit_code": code, "ticks": len(steady), "device": ticks[-1]["device"],
            "inference_precision": ticks[-1]["inference_precision"],
            "num_requests": ticks[-1]["num_requests"],
            "fps_capture": rate(base, ticks[-1], "captured"),
            "fps_inference": rate(base, ticks[-1], "inferred"),
            "fps_publish": rate(base, ticks[-1], "published"),
            "latency_p50_ms": round(statistics.median(t["latency_ms"]["p50"] for t in steady), 2),
            "latency_p95_ms": round(statistics.median(t["latency_ms"]["p95"] for t in steady), 2),
            "latency_p99_ms": round(max(t["latency_ms"]["p99"] for t in steady), 2),
            "cpu_percent": mean("process.cpu_percent"),
            "rss_mb": round(ticks[-1]["process"]["rss_bytes"] / 2**20, 1),
            "frames": ticks[-1]["frames"],
            "dropped_fraction": round(
                (ticks[-1]["frames"]["dropped"] - base["frames"]["dropped"])
                / max(1, ticks[-1]["frames"]["captured"] - base["frames"]["captured"]), 3),
            "cpu_ms_per_frame": stage_split(base, ticks[-1])}


def measured_ticks(stats: List[Dict[str, Any]], stopped_at: float,
                   warmup_s: float = 3.0) -> List[Dict[str, Any]]:
    """The stats ticks that measure the running agent: past ``warmup_s`` of uptime, with
    frames, and received before the benchmark's SIGTERM (the tick the agent sends as it
    stops covers its shutdown). The first of them is the baseline: its own interval holds
    the start (compiles, the first frames), so only the intervals after it are measured."""
    def usable(t: Any) -> bool:  # a tick without the fields measured: not counted
        try:
            return (t["_received_mono"] < stopped_at and t["uptime_s"] > warmup_s
                    and t["latency_ms"]["count"] > 0
                    and all(t["frames"][k] >= 0 for k in ("captured", "inferred", "published")))
        except (KeyError, TypeError):
            return False

    return [t for t in stats if usable(t)]


def rate(base: Dict[str, Any], last: Dict[str, Any], counter: str) -> float:
    """Frames per second of ``counter`` from tick ``base`` to tick ``last``, by the counters
    (not a mean of the ticks' rates, whose intervals can differ)."""
    seconds = last["uptime_s"] - base["uptime_s"]
    return round((last["frames"][counter] - base["frames"][counter]) / max(seconds, 1e-9), 2)


def stage_split(first: Dict[str, Any], last: Dict[str, Any]) -> Optional[Dict[str, float]]:
    """ms of CPU per frame by stage, between two stats ticks' stage snapshots."""
    a, b = first.get("_stages"), last.get("_stages")
    if not a or not b:
        return None
    ca, cb = a["counters"], b["counters"]
    inferred = max(1, cb.get("inferred", 0) - ca.get("inferred", 0))
    captured = max(1, cb.get("captured", 0) - ca.get("captured", 0))

    def thread(name: str) -> float:
        return sum(v for k, v in b["threads"].items() if k.startswith(name)) - sum(
            v for k, v in a["threads"].items() if k.startswith(name))

    def stage(name: str) -> float:
        sa = a["stages"].get(name, {"cpu_s": 0.0, "calls": 0})
        sb = b["stages"].get(name, {"cpu_s": 0.0, "calls": 0})
        return (sb["cpu_s"] - sa["cpu_s"]) / max(1, sb["calls"] - sa["calls"])

    out = {
        "decode_per_captured": (thread("capture") + thread("ffmpeg")) / captured * 1e3,
        # per inferred frame: the decode of dropped frames included
        "decode": (thread("capture") + thread("ffmpeg")) / inferred * 1e3,
        "preprocess": stage("preprocess") * 1e3,
        "inference": (thread("native") / inferred + stage("submit")) * 1e3,
        "postprocess": stage("postprocess") * 1e3,
        "encode": stage("encode") * 1e3,
        "quality": stage("quality") * 1e3,  # the window; the graph's figures: in inference
        "publish": (stage("message") + stage("publish")
                    + thread("paho") / inferred) * 1e3,
        "total": (b["process_cpu_s"] - a["process_cpu_s"]) / inferred * 1e3,
    }
    named = sum(v for k, v in out.items() if k not in ("total", "decode_per_captured"))
    out["other"] = out["total"] - named
    result: Dict[str, Any] = {k: round(v, 3) for k, v in out.items()}
    result["threads"] = {k: round((v - a["threads"].get(k, 0.0)) / inferred * 1e3, 3)
                         for k, v in b["threads"].items()}
    spans = {}
    for k, v in b.get("spans", {}).items():
        w = a.get("spans", {}).get(k, {"wall_s": 0.0, "count": 0})
        spans[k] = round((v["wall_s"] - w["wall_s"]) / max(1, v["count"] - w["count"]) * 1e3, 3)
    result["latency_mean_ms"] = spans
    return result


def decode_cpu(clip: Path, seconds: float) -> Dict[str, float]:
    """Decode the clip alone with the agent's reader: process CPU seconds per frame."""
    from edge_agent.sources.capture import Reader

    frames, reader = 0, Reader(str(clip), 10.0)
    c0, t0 = time.process_time(), time.monotonic()
    try:
        while time.monotonic() - t0 < seconds:
            ok, image = reader.read()
            if not ok:
                reader.close()
                reader = Reader(str(clip), 10.0)
                continue
            frames += image is not None
    finally:
        reader.close()
    cpu = time.process_time() - c0
    return {"frames": frames, "cpu_ms_per_frame": round(cpu / max(1, frames) * 1e3, 3),
            "wall_fps": round(frames / (time.monotonic() - t0), 1)}


def write_bundle(bundle: Path, name: str, version: str, arch: Dict[str, str], size: int,
                 channels: int, precision: str) -> Path:
    """A manifest for ``bundle/cpu/model.xml`` (as the schema asks: see tiny_bundle)."""
    import datetime as dt

    import openvino as ov

    from edge_agent.bundle import manifest as mf

    files = [mf.file_entry(bundle, bundle / "cpu" / n) for n in ("model.xml", "model.bin")]
    mf.write_manifest(bundle, mf.Manifest(
        name=name, version=version,
        created=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        tools={"openvino": ov.get_version(), "torch": "none", "nncf": "none"},
        source_checkpoint={"file": "none", "sha256": "0" * 64},
        model={"architecture": arch["architecture"], "encoder": arch.get("encoder", "none"),
               "preset": arch.get("preset", "bench"), "label_mode": "binary"},
        input=mf.TensorSpec("image", [1, 3, size, size], "f32"),
        output=mf.TensorSpec("logits", [1, channels, size, size], "f32", kind="logits"),
        classes=["background", "pet"],
        evaluation={"split": "none (random weights: speed only)", "images": 0, "metrics": {}},
        targets={"cpu": mf.TargetEntry(
            "cpu", "CPU", precision, "openvino_ir", "cpu/model.xml", files, "2023.0", True,
            accuracy={"dice": 0.0, "fg_iou": 0.0, "inference_precision": "f32"})},
        files=files))
    return bundle


def synthetic_bundle(root: Path, size: int = 256, width: int = 32, depth: int = 6) -> Path:
    """A conv net of realistic cost (no torch): ``depth`` 3x3 convs of ``width`` channels."""
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

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
    return write_bundle(bundle, "synthetic", "1", {"architecture": f"{depth}x conv3x3/{width}"},
                        size, 2, "FP32")


def preset_bundle(root: Path, preset: str, clip: Path, calib: int = 32) -> Path:
    """A random-weight model of a build preset (e.g. ``seed``), NNCF INT8 calibrated on clip
    frames, as a cpu bundle: its speed is the trained model's (weights do not change cost)."""
    import cv2
    import nncf
    import numpy as np
    import torch

    from build_models import export, models
    from build_models.arch import preset as arch_preset

    cfg = arch_preset(preset).without_weights()
    torch.manual_seed(0)
    size = cfg.size
    fp32 = export.to_openvino(models.create(cfg).eval(), size)
    cap, frames = cv2.VideoCapture(str(clip)), []
    while len(frames) < calib:
        ok, img = cap.read()
        if not ok:
            break
        rgb = cv2.cvtColor(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA),
                           cv2.COLOR_BGR2RGB)
        frames.append(rgb.transpose(2, 0, 1)[np.newaxis].astype(np.float32))
    cap.release()
    int8 = nncf.quantize(fp32, nncf.Dataset(frames), subset_size=len(frames))
    bundle = root / f"preset-{preset}" / "random"
    (bundle / "cpu").mkdir(parents=True)
    export.save_ir(int8, bundle / "cpu" / "model.xml")
    channels = int(int8.outputs[0].get_partial_shape()[1].get_length())
    return write_bundle(bundle, f"preset-{preset}", "random",
                        {"architecture": cfg.arch, "encoder": cfg.encoder, "preset": preset},
                        size, channels, "INT8")


def run_benchmark_app(model: Path, device: str, hint: str, seconds: int,
                      fixed_cpu_s: float = 0.0) -> Dict[str, Any]:
    """benchmark_app's fps, latency median and CPU per inference (less ``fixed_cpu_s``:
    its start-up and compile, measured by a one-iteration run)."""
    exe = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    limit = ["-niter", "1"] if seconds == 0 else ["-t", str(seconds)]
    res = subprocess.run([exe, "-m", str(model), "-d", device, "-hint", hint, *limit],
                         capture_output=True, text=True, timeout=seconds + 120)
    out = res.stdout + res.stderr
    fps = re.search(r"Throughput:\s*([\d.]+)\s*FPS", out)
    med = re.search(r"Median:\s*([\d.]+)\s*(ms|us)", out)
    count = re.search(r"Count:\s*(\d+)\s*iterations", out)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if seconds == 0:
        return {"cpu_s": cpu}
    if res.returncode != 0 or not fps:
        raise SystemExit(f"benchmark_app failed ({res.returncode}):\n{out[-2000:]}")
    return {"hint": hint, "fps": float(fps.group(1)),
            # its whole process (start-up and compile included): an upper bound per inference
            "cpu_ms_per_inference": round(max(0.0, cpu - fixed_cpu_s) / int(count.group(1)) * 1e3,
                                          3) if count else None,
            "median_latency_ms": (float(med.group(1)) / (1000 if med.group(2) == "us" else 1))
            if med else None}


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_avg() -> List[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def chart(result: Dict[str, Any], path: Path) -> None:
    """fps per repeat (benchmark_app, limit, agents) and the agent's CPU per frame by stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reps = result["repeats"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    xs = list(range(1, len(reps) + 1))
    ax1.plot(xs, [r["benchmark_app_fps"] for r in reps], "o-", label="benchmark_app")
    ax1.plot(xs, [r["limit_fps"] for r in reps], "s-", label="limit (decode-inclusive)")
    for name in result["summary"]:
        ax1.plot(xs, [r["agents"][name]["fps_inference"] for r in reps], "^-",
                 label=f"agent: {name}")
    ax1.set_xlabel("repeat")
    ax1.set_ylabel("frames/s")
    ax1.set_ylim(bottom=0)
    ax1.legend(fontsize=8)
    ax1.set_title(result["model"]["name"])
    stages = ["decode", "preprocess", "inference", "postprocess", "encode", "quality", "publish",
              "other"]
    names = [n for n in result["summary"] if result["cpu_ms_per_frame"].get(n)]
    bottom = [0.0] * len(names)
    for st in stages:
        vals = [max(0.0, result["cpu_ms_per_frame"][n][st]) for n in names]
        ax2.bar(names, vals, bottom=bottom, label=st)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax2.set_ylabel("CPU ms per inferred frame")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="", help="bundle version dir (default: newest in demo/)")
    p.add_argument("--synthetic", action="store_true",
                   help="use a generated 256x256 FP32 conv net instead of a bundle")
    p.add_argument("--preset", default="",
                   help="build a random-weight INT8 bundle of this build preset (e.g. seed)")
    p.add_argument("--target", default="cpu")
    p.add_argument("--device", default="CPU")
    p.add_argument("--clip", default=str(ROOT / "demo" / "clip.mp4"))
    p.add_argument("--duration", type=float, default=10.0, help="measured agent seconds")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--encoding", default="png", choices=("png", "rle"))
    p.add_argument("--resolution", default="model", choices=("model", "frame"))
    p.add_argument("--source-fps", type=float, default=0.0,
                   help="clip read rate (0: --pace x the decode-inclusive limit)")
    p.add_argument("--pace", type=float, action="append", default=[],
                   help="clip read rate as a fraction of the limit (repeatable: one agent run "
                        "each; default 1.1). Frames read beyond what the agent takes are "
                        "decoded and dropped: a lower pace with no drops shows its capacity")
    p.add_argument("--camera-fps", type=float, default=30.0,
                   help="paced camera for the latency run (0 = skip)")
    p.add_argument("--compare", action="append", default=[], metavar="DIR",
                   help="another checkout whose agent runs in the same repeats")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:VAR=VALUE[,...]",
                   help="this checkout again with environment overrides, e.g. "
                        "req3:SEGEDGE_MODEL_NUM_REQUESTS=3 (a config key side by side)")
    p.add_argument("--out", default="runs/bench/agent.json")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="segedge-bench-"))
    roots = {"this": ROOT, **{Path(d).name: Path(d).resolve() for d in args.compare}}
    envs: Dict[str, Dict[str, str]] = {}
    for spec in args.variant:
        name, _, pairs = spec.partition(":")
        try:
            envs[name] = dict(pair.split("=", 1) for pair in pairs.split(",") if pair)
        except ValueError:
            p.error(f"--variant {spec!r}: expected NAME:VAR=VALUE[,VAR=VALUE]")
        if not name or name in roots:
            p.error(f"--variant {spec!r}: a new name is needed")
        roots[name] = ROOT
    n = cores()
    paces = args.pace or [1.1]
    runs = [(name if len(paces) == 1 else f"{name}@{pace:g}", root, pace)
            for name, root in roots.items() for pace in paces]
    reps: List[Dict[str, Any]] = []
    try:
        clip = Path(args.clip).resolve()
        bundle = Path(args.bundle) if args.bundle else (
            synthetic_bundle(work) if args.synthetic else
            preset_bundle(work, args.preset, clip) if args.preset
            else find_bundle(ROOT / "demo" / "models"))
        bundle = bundle.resolve() if bundle is not None else None
        if bundle is None or not clip.is_file():
            raise SystemExit(f"no bundle under demo/models or no clip {clip}: pass --bundle/--clip")
        manifest, entry, model = open_target(bundle, args.target)
        seconds = max(5, int(args.duration / 2))
        fixed = run_benchmark_app(model, args.device, "throughput", 0)["cpu_s"]
        for r in range(args.repeats):
            rep: Dict[str, Any] = {"load_avg_before": load_avg()}
            bench = run_benchmark_app(model, args.device, "throughput", seconds, fixed)
            dec = decode_cpu(clip, min(5.0, seconds))
            limit = 1.0 / (1.0 / bench["fps"] + dec["cpu_ms_per_frame"] / 1e3 / n)
            rep.update(benchmark_app_fps=bench["fps"], decode=dec, limit_fps=round(limit, 1),
                       benchmark_app_cpu_ms=bench["cpu_ms_per_inference"], agents={})
            order = list(runs)
            if r % 2:
                order.reverse()  # interleave A/B so neither always runs second
            for name, root, pace in order:
                source_fps = args.source_fps or pace * limit
                agent = run_agent(bundle, args.target, args.device, clip, args.duration, work,
                                  args.encoding, source_fps, root, args.resolution,
                                  envs.get(name.split("@")[0]))
                agent["source_fps"] = round(source_fps, 1)
                agent["ratio_vs_benchmark_app"] = round(agent["fps_inference"] / bench["fps"], 3)
                agent["ratio_vs_limit"] = round(agent["fps_inference"] / limit, 3)
                split = agent["cpu_ms_per_frame"]
                if split and bench["cpu_ms_per_inference"]:  # the load-proof view: CPU per frame
                    agent["cpu_ratio_limit_vs_agent"] = round(
                        (bench["cpu_ms_per_inference"] + dec["cpu_ms_per_frame"])
                        / split["total"], 3)
                rep["agents"][name] = agent
                print(f"repeat {r + 1} {name}: agent {agent['fps_inference']} fps, "
                      f"benchmark_app {bench['fps']}, decode {dec['cpu_ms_per_frame']} ms CPU, "
                      f"limit {limit:.1f}: ratio {agent['ratio_vs_benchmark_app']} / "
                      f"{agent['ratio_vs_limit']}, {agent['dropped_fraction']:.0%} of frames read "
                      f"dropped (load {load_avg()})", flush=True)
            rep["load_avg_after"] = load_avg()
            reps.append(rep)
        latency: Dict[str, Any] = {}
        if args.camera_fps:
            bench_lat = run_benchmark_app(model, args.device, "latency", seconds)
            latency["benchmark_app_median_ms"] = bench_lat["median_latency_ms"]
            for name, root in roots.items():
                cam = run_agent(bundle, args.target, args.device, clip, args.duration, work,
                                args.encoding, args.camera_fps, root, args.resolution,
                                envs.get(name))
                latency[name] = {k: cam[k] for k in (
                    "fps_inference", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms",
                    "cpu_percent", "cpu_ms_per_frame")}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(values: List[float]) -> float:
        return round(statistics.median(values), 3)

    summary: Dict[str, Any] = {}
    split: Dict[str, Any] = {}
    for name, _, _ in runs:
        summary[name] = {
            "fps_inference": med([r["agents"][name]["fps_inference"] for r in reps]),
            "ratio_vs_benchmark_app": med([r["agents"][name]["ratio_vs_benchmark_app"]
                                           for r in reps]),
            "ratio_vs_limit": med([r["agents"][name]["ratio_vs_limit"] for r in reps]),
            "cpu_percent": med([r["agents"][name]["cpu_percent"] for r in reps]),
            "dropped_fraction": med([r["agents"][name]["dropped_fraction"] for r in reps]),
            "cpu_ratio_limit_vs_agent": med([r["agents"][name].get("cpu_ratio_limit_vs_agent")
                                             or 0.0 for r in reps])}
        parts = [r["agents"][name]["cpu_ms_per_frame"] for r in reps
                 if r["agents"][name]["cpu_ms_per_frame"]]
        split[name] = {k: med([x[k] for x in parts]) for k in parts[0]
                       if not isinstance(parts[0][k], dict)} if parts else None
    result = {
        "model": {"name": manifest.name, "version": manifest.version, "target": entry.name,
                  "precision": entry.precision, "input": manifest.input.shape},
        "clip": str(clip), "encoding": args.encoding, "mask_resolution": args.resolution,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": n,
                    "python": platform.python_version()},
        "agents": {k: str(v) + (f" {envs[k]}" if k in envs else "") for k, v in roots.items()},
        "benchmark_app_fps": med([r["benchmark_app_fps"] for r in reps]),
        "decode_cpu_ms_per_frame": med([r["decode"]["cpu_ms_per_frame"] for r in reps]),
        "benchmark_app_cpu_ms_per_inference": med([r["benchmark_app_cpu_ms"] or 0.0
                                                   for r in reps]),
        "limit_fps": med([r["limit_fps"] for r in reps]),
        "summary": summary, "cpu_ms_per_frame": split, "camera": latency, "repeats": reps,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    chart(result, out.with_suffix(".png"))
    print(f"benchmark_app {result['benchmark_app_fps']} fps, decode "
          f"{result['decode_cpu_ms_per_frame']} ms CPU/frame on {n} cores -> limit "
          f"{result['limit_fps']} fps (medians of {len(reps)}); benchmark_app CPU "
          f"{result['benchmark_app_cpu_ms_per_inference']} ms/inference")
    for name, s in summary.items():
        print(f"agent {name}: {s['fps_inference']} fps = {s['ratio_vs_benchmark_app']} of "
              f"benchmark_app, {s['ratio_vs_limit']} of the limit; CPU (benchmark_app + decode) / "
              f"agent = {s['cpu_ratio_limit_vs_agent']}; {s['dropped_fraction']:.0%} of frames "
              f"read dropped; CPU ms/frame {split[name]}")
    if latency:
        for name in roots:
            print(f"camera {args.camera_fps:g} fps, agent {name}: capture->publish p50 "
                  f"{latency[name]['latency_p50_ms']} ms vs benchmark_app latency median "
                  f"{latency['benchmark_app_median_ms']} ms (goal: +3 ms)")
    print(f"written to {out} and {out.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()
