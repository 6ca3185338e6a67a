"""Choose and check the drift defaults offline: the demo clip and the same clip as other
cameras would see it, through the agent's own graph, then the drift state machine on a
synthetic 12 fps clock (no real time; a 30-minute loop takes seconds).

    python scripts/drift_probe.py                      # demo bundle (its reference) and clip
    python scripts/drift_probe.py --data DIR --out runs/drift_probe.json
    python scripts/drift_probe.py --window-s 30 --enter 0.8 ...   # try other settings

Variants (OpenCV, deterministic): ``ir`` (night infrared: grayscale, contrast cut to a
third, sensor noise), ``fog`` (haze blended over, slight blur), ``dark`` (a quarter of the
light, noise), ``blur`` (heavy Gaussian blur). For each: the per-frame figures' spread,
the worst time to ``drifting`` after the picture changes and to ``ok`` after it returns
(over 12 alignments of the change within the clip), and PSI of a whole-clip window against
the reference's decile bins, the statistic tried first (docs/quality.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from build_models.reference import compute, measure  # noqa: E402
from edge_agent.bundle.manifest import load_manifest  # noqa: E402
from edge_agent.config import QualityConfig  # noqa: E402
from edge_agent.quality.drift import DriftSettings, Reference, simulate  # noqa: E402


def ir(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY).astype(np.float32)
    gray = 110 + (gray - gray.mean()) * 0.35 + rng.normal(0, 8, gray.shape)
    return cv2.cvtColor(np.clip(gray, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)


def fog(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    hazy = frame.astype(np.float32) * 0.45 + 200 * 0.55
    return np.clip(cv2.GaussianBlur(hazy, (0, 0), 1.5), 0, 255).astype(np.uint8)


def dark(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    dim = frame.astype(np.float32) * 0.25 + rng.normal(0, 4, frame.shape)
    return np.clip(dim, 0, 255).astype(np.uint8)


def blur(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return cv2.GaussianBlur(frame, (0, 0), 8)


VARIANTS: Dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "ir": ir, "fog": fog, "dark": dark, "blur": blur}


def read_clip(path: Path) -> List[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    if not frames:
        raise SystemExit(f"{path}: no frames")
    return frames


def psi(window: np.ndarray, reference: np.ndarray, bins: int = 10, eps: float = 1e-3) -> float:
    """Population stability index of ``window`` against ``reference``'s quantile bins."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    w = np.bincount(np.searchsorted(edges, window, "right"), minlength=len(edges) + 1)
    r = np.bincount(np.searchsorted(edges, reference, "right"), minlength=len(edges) + 1)
    w = np.maximum(w / len(window), eps)
    r = np.maximum(r / len(reference), eps)
    return float(np.sum((w - r) * np.log(w / r)))


def looped(values: np.ndarray, seconds: float, fps: float, offset: int = 0) -> np.ndarray:
    n = int(seconds * fps)
    return np.roll(np.tile(values, n // len(values) + 2), -offset)[:n]


def scenario(normal: np.ndarray, other: np.ndarray, fps: float, settings: DriftSettings,
             reference: Reference) -> Dict[str, Optional[float]]:
    """Normal 60 s, the variant 120 s, normal 120 s; worst times over 12 alignments."""
    worst_in: Optional[float] = 0.0
    worst_out: Optional[float] = 0.0
    for offset in np.linspace(0, len(normal) - 1, 12).astype(int):
        values = np.concatenate([looped(normal, 60, fps, offset), looped(other, 120, fps, offset),
                                 looped(normal, 120, fps, offset)])
        trace = simulate(values, fps, settings, reference)
        t_in = next((t - 60 for t, s, _ in trace if t >= 60 and s == "drifting"), None)
        t_out = next((t - 180 for t, s, _ in trace if t >= 180 and s == "ok"), None)
        worst_in = None if t_in is None or worst_in is None else max(worst_in, t_in)
        worst_out = None if t_out is None or worst_out is None else max(worst_out, t_out)
    return {"to_drifting_s": worst_in, "to_ok_s": worst_out}


def spread(values: np.ndarray) -> Dict[str, float]:
    return {"mean": round(float(values.mean()), 4),
            **{f"p{q}": round(float(np.percentile(values, q)), 4) for q in (5, 50, 95)}}


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    q = QualityConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=str(ROOT / "demo" / "models" / "pets-mobile" / "3.2.0"))
    p.add_argument("--clip", default=str(ROOT / "demo" / "clip.mp4"))
    p.add_argument("--data", help="Oxford-IIIT Pet folder: the reference when the bundle has "
                                  "none (or to measure it again)")
    p.add_argument("--fps", type=float, default=12.0)
    p.add_argument("--minutes", type=float, default=30.0, help="the normal clip's loop")
    p.add_argument("--window-s", type=float, default=q.window_s)
    p.add_argument("--window-frames", type=int, default=q.window_frames)
    p.add_argument("--min-frames", type=int, default=q.min_frames)
    p.add_argument("--enter", type=float, default=q.drift_enter)
    p.add_argument("--exit", type=float, default=q.drift_exit)
    p.add_argument("--enter-after-s", type=float, default=q.enter_after_s)
    p.add_argument("--exit-after-s", type=float, default=q.exit_after_s)
    p.add_argument("--out", default="", help="write the results as JSON here")
    args = p.parse_args(argv)
    bundle = Path(args.bundle)
    started = time.monotonic()
    manifest = load_manifest(bundle)
    data = manifest.reference
    if args.data:
        data = compute(bundle, Path(args.data), q.confidence_threshold)
    reference = Reference.from_manifest(data)
    if reference is None:
        raise SystemExit(f"{bundle} has no reference: pass --data DIR to measure one")
    settings = DriftSettings(window_s=args.window_s, window_frames=args.window_frames,
                             min_frames=args.min_frames, enter=args.enter, exit=args.exit,
                             enter_after_s=args.enter_after_s, exit_after_s=args.exit_after_s)
    frames = read_clip(Path(args.clip))
    figures: Dict[str, np.ndarray] = {}
    for name, transform in [("clip", None), *VARIANTS.items()]:
        rng = np.random.default_rng(0)
        shown = (transform(f, rng) if transform else f for f in frames)
        figures[name] = np.asarray(measure(bundle, shown, reference.threshold)["uncertain"])
    normal = figures["clip"]
    trace = simulate(looped(normal, args.minutes * 60, args.fps), args.fps, settings,
                     reference)
    first_ok = next((t for t, s, _ in trace if s == "ok"), None)
    late = [score for t, _, score in trace if t >= args.window_s and score is not None]
    result: Dict[str, Any] = {
        "bundle": str(bundle), "clip": str(args.clip), "fps": args.fps,
        "settings": dataclasses.asdict(settings),
        "reference": {**reference.info, "threshold": reference.threshold,
                      "quantiles": {f"p{int(x * 100)}": round(float(np.quantile(
                          reference.uncertain, x)), 4) for x in (0.5, 0.65, 0.75, 0.9)}},
        "normal": {"minutes": args.minutes, "first_ok_s": first_ok,
                   "drifting_evaluations": sum(1 for _, s, _ in trace if s == "drifting"),
                   "max_score_after_first_window": round(max(late), 4) if late else None,
                   "uncertain": spread(normal),
                   "psi_whole_clip": round(psi(normal, reference.uncertain), 3)},
        "variants": {}}
    for name in VARIANTS:
        result["variants"][name] = {
            "uncertain": spread(figures[name]),
            "psi_whole_clip": round(psi(figures[name], reference.uncertain), 3),
            "score_whole_clip": round(reference.score(float(figures[name].mean())), 4),
            **scenario(normal, figures[name], args.fps, settings, reference)}
    result["seconds"] = round(time.monotonic() - started, 1)
    n = result["normal"]
    print(f"reference {reference.info['split']} ({reference.info['frames']} images): "
          f"uncertain {result['reference']['quantiles']}")
    print(f"normal  mean {n['uncertain']['mean']:.3f}  {args.minutes:g} min loop: first ok "
          f"{first_ok} s, drifting {n['drifting_evaluations']} evaluations, max score "
          f"{n['max_score_after_first_window']}, PSI(whole clip) {n['psi_whole_clip']}")
    for name, v in result["variants"].items():
        print(f"{name:6s}  mean {v['uncertain']['mean']:.3f}  score {v['score_whole_clip']:.2f}"
              f"  PSI {v['psi_whole_clip']:.2f}  drifting after {v['to_drifting_s']} s, "
              f"ok {v['to_ok_s']} s after the return (worst of 12)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
