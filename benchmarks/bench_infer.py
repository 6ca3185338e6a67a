"""PyTorch eager vs OpenVINO FP32/FP16/INT8 on the same images, same size, same machine.

    python benchmarks/bench_infer.py --preset seed --out runs/bench/seed.json
    python benchmarks/bench_infer.py --checkpoint runs/demo/best.pt --data DIR

Sync latency (one request, PERFORMANCE_HINT=LATENCY) and throughput (AsyncInferQueue
with the plugin's optimal number of requests, PERFORMANCE_HINT=THROUGHPUT) per variant;
torch eager runs batch 1 in a loop. The variants are measured in interleaved rounds so a
busy shared machine slows them alike. Writes JSON + a bar chart; prints the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from build_models.speed import summary  # noqa: E402


def load_images(data: Optional[str], size: int, count: int, seed: int = 0) -> List[np.ndarray]:
    """[1,3,H,W] f32 0..255 frames: the test split of a Pet folder, or seeded noise."""
    if data:
        from build_models import data as D

        pairs = D.scan_split(Path(data), "test").pairs[:count]
        return [b for b, _ in D.PetData(pairs, size).batches(1)]
    rng = np.random.default_rng(seed)
    return [rng.uniform(0, 255, (1, 3, size, size)).astype(np.float32) for _ in range(count)]


class TorchRunner:
    """PyTorch eager, batch 1; its throughput is the sequential loop."""

    def __init__(self, model: Any, images: List[np.ndarray]):
        import torch

        self.torch, self.model = torch, model.eval()
        self.tensors = [torch.from_numpy(im) for im in images]
        self.info = {"threads": torch.get_num_threads(), "inference_precision": "f32"}

    def sync(self, i: int) -> None:
        with self.torch.inference_mode():
            self.model(self.tensors[i % len(self.tensors)])

    def burst(self, count: int) -> None:
        for i in range(count):
            self.sync(i)


class OVRunner:
    """One LATENCY-compiled request for sync latency, a THROUGHPUT-compiled
    AsyncInferQueue (the plugin's optimal size) for throughput."""

    def __init__(self, core: Any, model: Any, images: List[np.ndarray],
                 precision: Optional[str]):
        import openvino as ov

        from edge_agent.ovcompat import precision_name

        extra = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
        self.images = images
        latency = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY", **extra})
        self.request = latency.create_infer_request()
        tput = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT", **extra})
        nreq = int(tput.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.queue = ov.AsyncInferQueue(tput, nreq)
        self.info = {"async_requests": nreq, "inference_precision": precision_name(
            str(latency.get_property("INFERENCE_PRECISION_HINT")))}

    def sync(self, i: int) -> None:
        self.request.infer({0: self.images[i % len(self.images)]})

    def burst(self, count: int) -> None:
        for i in range(count):
            self.queue.start_async({0: self.images[i % len(self.images)]})
        self.queue.wait_all()


def interleaved(runners: Dict[str, Any], iterations: int, warmup: int, rounds: int
                ) -> Dict[str, Dict[str, Any]]:
    """Measure every runner in alternating short rounds (rotating the order), so load
    from other processes on a shared machine hits all variants alike."""
    names = list(runners)
    times: Dict[str, List[float]] = {n: [] for n in names}
    busy = dict.fromkeys(names, 0.0)
    frames = dict.fromkeys(names, 0)
    for name in names:
        for i in range(warmup):
            runners[name].sync(i)
        runners[name].burst(max(1, warmup))
    per_round = max(1, iterations // rounds)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            runner = runners[name]
            for i in range(per_round):
                start = time.perf_counter()
                runner.sync(i)
                times[name].append(time.perf_counter() - start)
            start = time.perf_counter()
            runner.burst(per_round)
            busy[name] += time.perf_counter() - start
            frames[name] += per_round
    return {n: summary(times[n], frames[n] / busy[n], rounds=rounds, **runners[n].info)
            for n in names}


def chart(results: Dict[str, Dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in ((ax1, "fps", "throughput (frames/s)"),
                           (ax2, "latency_ms_p50", "sync latency p50 (ms)")):
        bars = ax.bar(names, [results[n][key] for n in names], color="tab:blue")
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelsize=7, rotation=20)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default="seed", help="random-weight model of this preset")
    src.add_argument("--checkpoint", help="a best.pt from segedge-build train")
    p.add_argument("--size", type=int, help="input size (default: the preset's/checkpoint's)")
    p.add_argument("--data", help="Pet folder: benchmark on its test images (else noise)")
    p.add_argument("--images", type=int, default=16, help="distinct frames to cycle through")
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per variant")
    p.add_argument("--calib", type=int, default=32, help="INT8 calibration frames")
    p.add_argument("--out", default="runs/bench/bench.json", help="JSON; the PNG goes beside it")
    args = p.parse_args(argv)

    import nncf
    import openvino as ov
    import torch

    from build_models import export as X
    from build_models import models as M
    from build_models import tool_versions
    from build_models.train import model_from_checkpoint

    if args.checkpoint:
        model, meta = model_from_checkpoint(Path(args.checkpoint))
        size, what = args.size or int(meta["size"]), f"checkpoint {args.checkpoint}"
    else:
        cfg = M.preset(args.preset, size=args.size)
        torch.manual_seed(0)
        model, size, what = M.create(cfg).eval(), cfg.size, f"preset {args.preset} (random)"
    images = load_images(args.data, size, args.images)
    core = ov.Core()
    fp32 = X.to_openvino(model, size)
    int8 = nncf.quantize(fp32, nncf.Dataset((images * args.calib)[: args.calib]),
                         subset_size=args.calib)
    runners: Dict[str, Any] = {"torch eager FP32": TorchRunner(model, images)}
    with tempfile.TemporaryDirectory() as tmp:
        fp16_xml = X.save_ir(fp32, Path(tmp) / "fp16.xml", fp16=True)
        variants = [("OV FP32 (f32)", fp32, "f32"), ("OV FP32 (default)", fp32, None),
                    ("OV FP16 IR (f32)", core.read_model(fp16_xml), "f32"),
                    ("OV INT8", int8, None)]
        for name, ov_model, precision in variants:
            runners[name] = OVRunner(core, ov_model, images, precision)
    results = interleaved(runners, args.iterations, args.warmup, args.rounds)
    base = results["torch eager FP32"]
    ratios = {name: {"fps_vs_torch": r["fps"] / base["fps"],
                     "latency_speedup_vs_torch": base["latency_ms_p50"] / r["latency_ms_p50"]}
              for name, r in results.items() if name != "torch eager FP32"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"step": "benchmark", "model": what, "size": size, "batch": 1,
              "images": "test split of " + args.data if args.data else "seeded noise",
              "machine": {"cpu": platform.processor() or platform.machine(),
                          "cores": os.cpu_count(), "python": platform.python_version()},
              "tools": tool_versions(), "results": results, "ratios": ratios,
              "chart": str(out.with_suffix(".png"))}
    out.write_text(json.dumps(report, indent=2) + "\n")
    chart(results, out.with_suffix(".png"), f"{what}, {size}x{size}, batch 1")
    for name, r in results.items():
        ratio = ratios.get(name, {}).get("fps_vs_torch", 1.0)
        print(f"{name:<20} {r['fps']:8.1f} fps  p50 {r['latency_ms_p50']:7.1f} ms  "
              f"x{ratio:.2f} vs torch eager  {r.get('inference_precision', '')}")
    return report


if __name__ == "__main__":
    main()
