"""Two (or more) models side by side in ``benchmark_app``: interleaved rounds in one run, so
load from other jobs falls on each alike; the ratio to the first is the figure to quote.

    python benchmarks/bench_bundles.py --model new=demo/models/pets-mobile/3.2.0/cpu/model.xml \\
        --model old=/tmp/2.0.0/cpu/model.xml --rounds 5 --seconds 10 \\
        --out docs/benchmarks/demo-models.json

Each round runs every model once (THROUGHPUT hint, then LATENCY hint), in turn; the JSON
has every round, the load average before it, the median and best per model and the ratio
of the medians; a chart (PNG) is written beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_agent import run_benchmark_app  # noqa: E402


def measure(models: Dict[str, Path], rounds: int, seconds: int, device: str
            ) -> Dict[str, Any]:
    runs: Dict[str, List[Dict[str, Any]]] = {name: [] for name in models}
    for r in range(rounds):
        for name, path in models.items():
            load = round(os.getloadavg()[0], 2)
            tput = run_benchmark_app(path, device, "throughput", seconds)
            lat = run_benchmark_app(path, device, "latency", seconds)
            runs[name].append({"round": r + 1, "load_1min": load, "fps": tput["fps"],
                               "latency_median_ms": lat["median_latency_ms"]})
            print(f"round {r + 1} {name}: {tput['fps']:.1f} fps, latency median "
                  f"{lat['median_latency_ms']} ms (load {load})", flush=True)
    summary = {}
    for name, rows in runs.items():
        fps = [row["fps"] for row in rows]
        lat = [row["latency_median_ms"] for row in rows if row["latency_median_ms"]]
        summary[name] = {"fps_median": round(statistics.median(fps), 1),
                         "fps_best": round(max(fps), 1),
                         "latency_median_ms": round(statistics.median(lat), 2) if lat else None}
    first = next(iter(models))
    for name in summary:
        summary[name]["fps_ratio_to_" + first] = round(
            summary[name]["fps_median"] / summary[first]["fps_median"], 3)
    return {"models": {n: str(p) for n, p in models.items()}, "device": device,
            "seconds_per_run": seconds, "rounds": rounds, "machine": {
                "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
            "summary": summary, "runs": runs}


def chart(result: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for name, rows in result["runs"].items():
        ax.plot([r["round"] for r in rows], [r["fps"] for r in rows], marker="o", label=name)
    ax.set_xlabel("round (models interleaved)")
    ax.set_ylabel("benchmark_app throughput, fps")
    ax.set_title("INT8 on CPU, side by side")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, metavar="NAME=PATH")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--device", default="CPU")
    p.add_argument("--out", type=Path, default=Path("runs/bench/models.json"))
    args = p.parse_args(argv)
    models = {}
    for item in args.model:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            p.error(f"--model {item!r}: expected NAME=PATH to an existing model file")
        models[name] = Path(path)
    result = measure(models, args.rounds, args.seconds, args.device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    chart(result, args.out.with_suffix(".png"))
    for name, s in result["summary"].items():
        print(f"{name}: median {s['fps_median']} fps (best {s['fps_best']}), latency median "
              f"{s['latency_median_ms']} ms, {list(s.items())[-1][0]} {list(s.items())[-1][1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
