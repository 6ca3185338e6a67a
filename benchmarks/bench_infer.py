"""The origin's steps side by side: PyTorch eager, TorchScript, bf16 autocast, (torch.compile),
OpenVINO FP32/FP16/INT8, on the same images, same size, same machine, in one run.

    python benchmarks/bench_infer.py --preset seed --out runs/bench/seed.json
    python benchmarks/bench_infer.py --checkpoint runs/demo/best.pt --data DIR --compile

Sync latency (one request, PERFORMANCE_HINT=LATENCY) and throughput (AsyncInferQueue
with the plugin's optimal number of requests, PERFORMANCE_HINT=THROUGHPUT) per variant;
the torch variants run batch 1 in a loop. The variants are measured in interleaved rounds
so a busy shared machine slows them alike. With ``--data`` every variant is also scored
(Dice, pet IoU) on the test split, so speed and accuracy sit in one table. Writes JSON + a
bar chart; prints the ratios.

The origin project went torch -> TorchScript -> IPEX bf16 -> INT8 -> OpenVINO. IPEX's bf16
path is upstream in PyTorch now (``torch.autocast("cpu", torch.bfloat16)``), and IPEX itself
has no build for the pinned torch (its last release, 2.8.0, targets torch 2.8), so the bf16
step here is PyTorch's own autocast.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from build_models.speed import summary  # noqa: E402


def load_images(folder: Optional[str], size: int, count: int, seed: int = 0
                ) -> List[np.ndarray]:
    """[1,3,H,W] f32 0..255 frames: the test split of a Pet folder, or seeded noise."""
    if folder:
        from build_models import data

        pairs = data.scan_split(Path(folder), "test").pairs[:count]
        return [b for b, _ in data.PetData(pairs, size).batches(1)]
    rng = np.random.default_rng(seed)
    return [rng.uniform(0, 255, (1, 3, size, size)).astype(np.float32) for _ in range(count)]


class TorchRunner:
    """A torch module run batch 1 under ``inference_mode``; its throughput is the loop.

    ``mode``: "eager" (the module as trained), "torchscript" (traced and frozen:
    constants folded, conv+bn fused), "bf16" (eager under CPU bf16 autocast, IPEX's bf16 path
    upstream) or "compile" (``torch.compile``, inductor).
    """

    MODES = ("eager", "torchscript", "bf16", "compile")

    def __init__(self, model: Any, images: List[np.ndarray], mode: str = "eager"):
        import torch

        if mode not in self.MODES:
            raise ValueError(f"unknown torch mode {mode!r}; valid: {', '.join(self.MODES)}")
        self.torch, self.mode = torch, mode
        self.tensors = [torch.from_numpy(im) for im in images]
        model = model.eval()
        with torch.inference_mode():
            if mode == "torchscript":
                with warnings.catch_warnings():  # deprecated in the pinned torch, still works
                    warnings.simplefilter("ignore", FutureWarning)
                    traced = torch.jit.trace(model, self.tensors[0], check_trace=False)
                    model = torch.jit.freeze(traced.eval())
            elif mode == "compile":
                model = torch.compile(model)
        self.model = model
        self.info = {"threads": torch.get_num_threads(),
                     "inference_precision": "bf16" if mode == "bf16" else "f32"}

    def infer(self, images: np.ndarray) -> np.ndarray:
        """NCHW f32 0..255 -> logits NCHW f32 (for scoring)."""
        outs = [self._run(self.torch.from_numpy(images[i:i + 1])) for i in range(len(images))]
        return np.concatenate([o.float().numpy() for o in outs])

    def _run(self, tensor: Any) -> Any:
        torch = self.torch
        with torch.inference_mode():
            if self.mode == "bf16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return self.model(tensor)
            return self.model(tensor)

    def sync(self, i: int) -> None:
        self._run(self.tensors[i % len(self.tensors)])

    def burst(self, count: int) -> None:
        for i in range(count):
            self.sync(i)


class OVRunner:
    """One LATENCY-compiled request for sync latency, a THROUGHPUT-compiled
    AsyncInferQueue (the plugin's optimal size) for throughput."""

    def __init__(self, core: Any, model: Any, images: List[np.ndarray],
                 precision: Optional[str]):
        import openvino as ov

        from edge_agent.inference.ovcompat import precision_name

        extra = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
        self.images = images
        latency = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY", **extra})
        self.request = latency.create_infer_request()
        tput = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT", **extra})
        nreq = int(tput.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.queue = ov.AsyncInferQueue(tput, nreq)
        self.info = {"async_requests": nreq, "inference_precision": precision_name(
            str(latency.get_property("INFERENCE_PRECISION_HINT")))}

    def infer(self, images: np.ndarray) -> np.ndarray:
        outs = [np.array(self.request.infer({0: images[i:i + 1]})[0])
                for i in range(len(images))]
        return np.concatenate(outs)

    def sync(self, i: int) -> None:
        self.request.infer({0: self.images[i % len(self.images)]})

    def burst(self, count: int) -> None:
        for i in range(count):
            self.queue.start_async({0: self.images[i % len(self.images)]})
        self.queue.wait_all()


def score(runners: Dict[str, Any], test_data: Any, num_classes: int) -> Dict[str, Dict]:
    """Dice and pet IoU of every variant on the same test images (the agent's class rule)."""
    from build_models.evaluate import measure_accuracy

    return {name: measure_accuracy(runner.infer, test_data, num_classes, desc=name)
            for name, runner in runners.items()}


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


TORCH_VARIANTS = (("torch eager FP32", "eager"), ("TorchScript FP32", "torchscript"),
                  ("torch bf16 autocast", "bf16"), ("torch.compile FP32", "compile"))
BASELINE = "torch eager FP32"


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default="seed", help="random-weight model of this preset")
    src.add_argument("--checkpoint", help="a best.pt from segedge-build train")
    p.add_argument("--size", type=int, help="input size (default: the preset's/checkpoint's)")
    p.add_argument("--data", help="Pet folder: benchmark on its test images (else noise) and "
                                  "score every variant on them")
    p.add_argument("--images", type=int, default=16, help="distinct frames to cycle through")
    p.add_argument("--score-images", type=int, default=0,
                   help="test images to score each variant on (0 = the whole test split)")
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per variant")
    p.add_argument("--calib", type=int, default=32, help="INT8 calibration frames")
    p.add_argument("--compile", action="store_true",
                   help="add torch.compile (inductor; compiling takes minutes on 2 cores)")
    p.add_argument("--out", default="runs/bench/bench.json", help="JSON; the PNG goes beside it")
    args = p.parse_args(argv)

    import nncf
    import openvino as ov
    import torch

    from build_models import data, export, models, tool_versions
    from build_models.arch import preset
    from build_models.checkpoint import model_from_checkpoint

    if args.checkpoint:
        model, meta = model_from_checkpoint(Path(args.checkpoint))
        cfg = meta.model
        size, what = args.size or meta.size, f"checkpoint {args.checkpoint}"
    else:
        cfg = preset(args.preset, size=args.size).without_weights()
        torch.manual_seed(0)
        model, size, what = models.create(cfg).eval(), cfg.size, f"preset {args.preset} (random)"
    images = load_images(args.data, size, args.images)
    core = ov.Core()
    fp32 = export.to_openvino(model, size)
    int8 = nncf.quantize(fp32, nncf.Dataset((images * args.calib)[: args.calib]),
                         subset_size=args.calib)
    runners: Dict[str, Any] = {}
    for name, mode in TORCH_VARIANTS:
        if mode != "compile" or args.compile:
            runners[name] = TorchRunner(model, images, mode)
    with tempfile.TemporaryDirectory() as tmp:
        fp16_xml = export.save_ir(fp32, Path(tmp) / "fp16.xml", fp16=True)
        variants = [("OV FP32 (f32)", fp32, "f32"), ("OV FP32 (default)", fp32, None),
                    ("OV FP16 IR (f32)", core.read_model(fp16_xml), "f32"),
                    ("OV INT8", int8, None)]
        for name, ov_model, precision in variants:
            runners[name] = OVRunner(core, ov_model, images, precision)
    results = interleaved(runners, args.iterations, args.warmup, args.rounds)
    if args.data:
        pairs = data.scan_split(Path(args.data), "test").pairs
        test = data.PetData(pairs[: args.score_images or None], size, cfg.label_mode)
        for name, scores in score(runners, test, cfg.num_classes).items():
            results[name]["accuracy"] = scores
    base = results[BASELINE]
    ratios = {name: {"fps_vs_torch": r["fps"] / base["fps"],
                     "latency_speedup_vs_torch": base["latency_ms_p50"] / r["latency_ms_p50"]}
              for name, r in results.items() if name != BASELINE}
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
        acc = r.get("accuracy")
        dice = f"  Dice {acc['dice']:.4f} pet IoU {acc['fg_iou']:.4f}" if acc else ""
        print(f"{name:<20} {r['fps']:8.1f} fps  p50 {r['latency_ms_p50']:7.1f} ms  "
              f"x{ratio:.2f} vs torch eager  {r.get('inference_precision', '')}{dice}")
    return report


if __name__ == "__main__":
    main()
