"""Choose the architecture and recipe by measurement: train candidates on the same budget,
measure their CPU speed, chart accuracy against speed, pick on the validation split.

    python -m build_models.candidates train --data DIR --extra-data EXTRA --out runs/cand \
        --minutes 3 -- --batch-size 32 --lr 3e-3 ...      # all candidates at once (a GPU)
    python -m build_models.candidates chart --summary runs/cand/candidates.json \
        --data DIR --out runs/cand                          # CPU speed + candidates.png

``train`` runs every candidate as its own ``build_models.train`` process, concurrently, each
for the same wall-clock budget, and writes ``candidates.json`` (validation figures per run)
and ``choice.json`` (the recipe picked by ``choose``). ``chart`` adds INT8/FP32 CPU
throughput (OpenVINO, random weights: speed does not depend on them) and plots
``candidates.png``; put both files beside the final ``best.pt`` and the bundle's report
carries them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from build_models import arch
from build_models.checkpoint import CheckpointMeta

# name: (preset, options beyond the common ones). "mobile" vs its variants measures the extra
# data, background mixing and the focal loss; the rest compare architectures on equal terms.
EXTRA = "{extra}"
CANDIDATES: Dict[str, Tuple[str, List[str]]] = {
    "mobile": ("mobile", ["--extra-data", EXTRA]),
    "mobile-noextra": ("mobile", []),
    "mobile-bgmix": ("mobile", ["--extra-data", EXTRA, "--background-mix", "0.3"]),
    "mobile-focal": ("mobile", ["--extra-data", EXTRA, "--loss", "dice_focal"]),
    "mobile-wide": ("mobile-wide", ["--extra-data", EXTRA]),
    "mobile-fpn": ("mobile-fpn", ["--extra-data", EXTRA]),
    "mobile-deeplab": ("mobile-deeplab", ["--extra-data", EXTRA]),
    "lite0": ("lite0", ["--extra-data", EXTRA]),
    "r18": ("r18", ["--extra-data", EXTRA]),
    # ImageNet EfficientNet-Lite0 from PyPI (offline): the 3.0.0 demo model's candidates
    "lite0-deeplab": ("lite0-deeplab", ["--extra-data", EXTRA]),
    "lite0-deeplab-slim": ("lite0-deeplab-slim", ["--extra-data", EXTRA]),
    "lite0-deeplab-slim-noextra": ("lite0-deeplab-slim", []),
}
ARCHITECTURES = ("mobile", "mobile-wide", "mobile-fpn", "mobile-deeplab", "lite0", "r18",
                 "lite0-deeplab", "lite0-deeplab-slim")


def options(name: str, extra: Optional[str]) -> List[str]:
    """A candidate's options with the extra-data folder filled in (dropped when none)."""
    opts = CANDIDATES[name][1]
    if extra is None:
        out: List[str] = []
        for i, o in enumerate(opts):
            if o == EXTRA or (o == "--extra-data" and opts[i + 1] == EXTRA):
                continue
            out.append(o)
        return out
    return [extra if o == EXTRA else o for o in opts]


def train_all(data: str, extra: Optional[str], out: Path, minutes: float,
              common: Sequence[str], names: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """Run the candidates concurrently (one process each, same budget); their summaries."""
    out.mkdir(parents=True, exist_ok=True)
    procs = {}
    for name in names:
        run = out / name
        run.mkdir(exist_ok=True)
        cmd = [sys.executable, "-m", "build_models.train", "--data", data, "--out", str(run),
               "--preset", CANDIDATES[name][0], "--max-minutes", str(minutes), "--no-progress",
               *common, *options(name, extra)]
        with open(run / "stdout.log", "w") as log:
            procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    return {name: summarize(name, out / name, proc.wait()) for name, proc in procs.items()}


def summarize(name: str, run: Path, rc: int) -> Dict[str, Any]:
    report = run / "report.json"
    if rc != 0 or not report.is_file():
        return {"failed": rc, "log": (run / "stdout.log").read_text()[-3000:]}
    r = json.loads(report.read_text())
    best = max(r["history"], key=lambda h: h["val_dice"]) if r["history"] else {}
    meta = CheckpointMeta.from_dict(r["meta"], str(report))
    return {"preset": meta.preset, "options": CANDIDATES[name][1],
            "best_val_dice": r["best_val_dice"], "best_val_fg_iou": best.get("val_fg_iou"),
            **{k: r[k] for k in ("best_epoch", "epochs_run", "steps", "elapsed_s",
                                 "stopped_by", "history")}}


def choose(results: Dict[str, Dict[str, Any]], allowed: Sequence[str] = ARCHITECTURES
           ) -> Dict[str, Any]:
    """The recipe: the best architecture by validation Dice among ``allowed`` (those fast
    enough), then each variant of ``mobile`` that beat it (extra data, background mixing,
    focal loss). Validation only; the test split is never looked at."""
    def dice(name: str) -> float:
        return results.get(name, {}).get("best_val_dice", -1.0)

    archs = [a for a in ARCHITECTURES if a in allowed and dice(a) >= 0]
    if not archs:
        raise ValueError("no candidate architecture finished training")
    arch = max(archs, key=dice)
    opts: List[str] = []
    if dice("mobile") >= dice("mobile-noextra"):
        opts += ["--extra-data", EXTRA]
    if dice("mobile-bgmix") > dice("mobile"):
        opts += ["--background-mix", "0.3"]
    if dice("mobile-focal") > dice("mobile"):
        opts += ["--loss", "dice_focal"]
    return {"preset": CANDIDATES[arch][0], "architecture": arch, "options": opts}


def build_irs(preset: str, calib: Any) -> Dict[str, Any]:
    """FP32 and INT8 (NNCF PTQ) OpenVINO models of a preset with random weights (speed does
    not depend on the weights), and its parameter count."""
    from build_models import export, models, quantize

    model = models.create(arch.preset(preset).without_weights()).eval()
    fp32 = export.to_openvino(model, model_size(preset))
    int8, _ = quantize.quantize(fp32.clone(), calib, quantize.QuantConfig(len(calib), 1.0, False))
    return {"params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "int8": int8, "fp32": fp32}


def measure_speeds(irs: Dict[str, Dict[str, Any]], frames: Any, iterations: int,
                   repeats: int) -> Dict[str, Dict[str, float]]:
    """INT8/FP32 async CPU throughput per preset: rounds over all presets, best of
    ``repeats`` kept, so that other jobs on a shared machine bias every candidate alike
    and the best round approaches the unloaded figure."""
    import openvino as ov

    from build_models import speed

    core = ov.Core()
    best: Dict[str, Dict[str, float]] = {p: {"int8_fps": 0.0, "fp32_fps": 0.0} for p in irs}
    for _ in range(repeats):
        for preset, ir in irs.items():
            for key in ("int8", "fp32"):
                fps = speed.measure(core, ir[key], frames[preset], iterations,
                                    precision="f32")["fps"]
                best[preset][f"{key}_fps"] = max(best[preset][f"{key}_fps"], fps)
    return {p: {"params_m": irs[p]["params_m"], **best[p], "repeats": repeats} for p in irs}


def model_size(preset: str) -> int:
    return arch.preset(preset).size


def chart(summary: Dict[str, Dict[str, Any]], data: str, out: Path, calib_images: int = 16,
          iterations: int = 100, repeats: int = 3, chosen: Optional[str] = None
          ) -> Dict[str, Any]:
    """Add CPU speed per preset to the summary; write candidates.json and candidates.png."""
    import numpy as np

    from build_models import data as pets
    from build_models.report import plot_candidates

    presets = sorted({r["preset"] for r in summary.values() if "preset" in r})
    pairs = pets.scan_split(Path(data), "train", decode=False).pairs[:calib_images]
    irs, frames = {}, {}
    for preset in presets:
        calib = pets.PetData(pairs, model_size(preset))
        irs[preset] = build_irs(preset, calib)
        frames[preset] = [np.ascontiguousarray(calib[i][0].transpose(2, 0, 1)[None],
                                               dtype=np.float32) for i in range(min(4, len(calib)))]
    speeds = measure_speeds(irs, frames, iterations, repeats)
    rows = {}
    for name, r in summary.items():
        if "preset" in r:
            rows[name] = {k: v for k, v in r.items() if k != "history"}
            rows[name].update(speeds[r["preset"]])
    out.mkdir(parents=True, exist_ok=True)
    result = {"candidates": rows, "chosen": chosen,
              "speed": f"OpenVINO CPU async throughput, batch 1, INFERENCE_PRECISION_HINT="
                       f"f32, best of {repeats} interleaved rounds of {iterations} inferences"}
    (out / "candidates.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_candidates(rows, out / "candidates.png", chosen)
    return result


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m build_models.candidates", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train every candidate on the same budget, concurrently")
    t.add_argument("--data", required=True)
    t.add_argument("--extra-data", help="extra Pet folder the candidates that use it get")
    t.add_argument("--out", required=True)
    t.add_argument("--minutes", type=float, required=True, help="training budget of each")
    t.add_argument("--only", help="comma list of candidate names (default all)")
    c = sub.add_parser("chart", help="CPU speed of each candidate + candidates.png")
    c.add_argument("--summary", required=True, help="candidates.json written by 'train'")
    c.add_argument("--data", required=True, help="Pet folder (calibration images)")
    c.add_argument("--out", required=True)
    c.add_argument("--chosen", help="name of the candidate whose recipe was kept")
    c.add_argument("--iterations", type=int, default=100)
    c.add_argument("--repeats", type=int, default=3, help="interleaved rounds, best kept")
    args, rest = p.parse_known_args([a for a in (argv if argv is not None else sys.argv[1:])
                                     if a != "--"])
    if args.command == "train":
        names = args.only.split(",") if args.only else list(CANDIDATES)
        results = train_all(args.data, args.extra_data, Path(args.out), args.minutes, rest,
                            names)
        (Path(args.out) / "candidates.json").write_text(json.dumps(results, indent=1) + "\n")
        choice = choose(results)
        choice["options"] = [args.extra_data if o == EXTRA else o for o in choice["options"]
                             if args.extra_data or o not in (EXTRA, "--extra-data")]
        (Path(args.out) / "choice.json").write_text(json.dumps(choice, indent=1) + "\n")
        return {"candidates": results, "choice": choice}
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    summary = json.loads(Path(args.summary).read_text())
    summary = summary.get("candidates", summary)
    return chart(summary, args.data, Path(args.out), iterations=args.iterations,
                 repeats=args.repeats, chosen=args.chosen)


if __name__ == "__main__":
    main()
