"""The bundle's quality reference: per-image confidence figures of the val and test splits.

    segedge-build reference --bundle models/pets-mobile/3.2.0 --data DIR

Each image is read as a camera frame would be (OpenCV, BGR) and run through the agent's
own ``Engine`` on the bundle's model (preprocessing, class decision and the
``frame_quality`` output in the graph, ``edge_agent.inference.ovcompat``), so the figures
are the ones a device computes: ``uncertain`` (share of pixels whose top-class probability
is below the threshold), ``margin`` and ``coverage`` (share of pixels not background).
The manifest gets them under ``reference`` (docs/bundle.md), the report a chart
(``report/reference.png``) and ``report/reference.json``. The export writes the reference
of every bundle it builds; this command adds one to a bundle built before (the manifest is
rewritten, schema_version 2, and the bundle verified again).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from build_models.errors import BundleError, HelpFormatter
from edge_agent.bundle import manifest as mf
from edge_agent.quality.figures import DEFAULT_THRESHOLD

SPLITS = ("val", "test")
MAX_PER_SPLIT = 2000  # images measured per split (evenly spaced): the manifest stays < 1 MiB
TARGET_ORDER = ("cpu", "npu", "gpu", "myriad")  # the first the bundle has runs the figures
CHART = "reference.png"


def split_images(data_dir: Path, split: str) -> List[Path]:
    """The JPEGs of a split of an Oxford-IIIT Pet folder (missing files left out)."""
    from build_models import data

    root = Path(data_dir)
    return [p for p in (root / "images" / f"{n}.jpg" for n in data.read_split(root, split))
            if p.is_file()]


def read_frames(paths: Iterable[Path]) -> Iterator[np.ndarray]:
    """Each image as the agent's file source reads it (OpenCV, u8 BGR); unreadable skipped."""
    import cv2

    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is not None:
            yield image


def measure(bundle: Path, frames: Iterable[np.ndarray], threshold: float = DEFAULT_THRESHOLD,
            target: str = "cpu", device: str = "CPU") -> Dict[str, List[float]]:
    """Per-frame ``uncertain``, ``margin`` and ``coverage`` of ``frames`` through the
    agent's Engine on ``bundle``'s ``target`` (frames whose figures are not finite are
    left out)."""
    from edge_agent.config import ModelConfig
    from edge_agent.inference.engine import Engine
    from edge_agent.inference.preprocess import to_model_input

    engine = Engine(ModelConfig(bundle=str(bundle), target=target, devices=[device]),
                    mf.OpenedBundle.open(str(bundle), target))
    engine.load()
    got: Dict[int, Tuple[Any, Any]] = {}
    engine.start(lambda i, out, fig: got.__setitem__(i, (out, fig)), decide=True,
                 quality=threshold)
    count = 0
    for frame in frames:
        engine.submit(to_model_input(frame, engine.size_hw), count)
        count += 1
    engine.drain()
    out: Dict[str, List[float]] = {"uncertain": [], "margin": [], "coverage": []}
    for i in range(count):
        classes, figures = got.get(i, (None, None))
        if classes is None or figures is None:
            continue
        out["uncertain"].append(figures.uncertain)
        out["margin"].append(figures.margin)
        out["coverage"].append(float(np.count_nonzero(classes)) / classes.size)
    return out


def _spread(items: Sequence[Path], limit: Optional[int]) -> List[Path]:
    """At most ``limit`` items, evenly spaced (all when there are fewer)."""
    if not limit or len(items) <= limit:
        return list(items)
    picks = np.linspace(0, len(items) - 1, num=limit).round().astype(int)
    return [items[i] for i in dict.fromkeys(picks.tolist())]


def pick_target(manifest: mf.Manifest) -> str:
    for target in TARGET_ORDER:
        if target in manifest.targets:
            return target
    raise BundleError(f"bundle {manifest.name} {manifest.version} has no target to run")


def compute(bundle: Path, data_dir: Path, threshold: float = DEFAULT_THRESHOLD,
            splits: Sequence[str] = SPLITS, target: Optional[str] = None,
            limit: Optional[int] = MAX_PER_SPLIT, device: str = "CPU") -> Dict[str, Any]:
    """The manifest's ``reference`` for ``bundle`` on ``data_dir``'s splits."""
    target = target or pick_target(mf.load_manifest(bundle))
    out: Dict[str, Any] = {"statistic": "uncertain", "threshold": float(threshold),
                           "target": target, "splits": {}}
    for split in splits:
        paths = _spread(split_images(data_dir, split), min(limit or MAX_PER_SPLIT,
                                                           MAX_PER_SPLIT))
        figures = measure(bundle, read_frames(paths), threshold, target, device)
        if not figures["uncertain"]:
            raise BundleError(f"{data_dir}: no image of split '{split}' gave figures")
        out["splits"][split] = {k: [round(v, 6) for v in vals] for k, vals in figures.items()}
    return out


def summary(reference: Dict[str, Any]) -> Dict[str, Any]:
    """Per split: images, mean and p5/p50/p95 of each figure (for report.json)."""
    out: Dict[str, Any] = {"threshold": reference["threshold"],
                           "target": reference.get("target")}
    for split, figures in reference["splits"].items():
        row: Dict[str, Any] = {"images": len(figures["uncertain"])}
        for name, values in figures.items():
            v = np.asarray(values)
            row[name] = {"mean": round(float(v.mean()), 4),
                         **{f"p{q}": round(float(np.percentile(v, q)), 4) for q in (5, 50, 95)}}
        out[split] = row
    return out


def chart(reference: Dict[str, Any], path: Path, title: str) -> Path:
    """Histograms of the per-image ``uncertain`` share and ``margin``, one colour per split,
    with the pooled reference's p50/p75/p90 marked (where a window's mean would sit to
    score 0.5/0.75/0.9)."""
    from build_models.report import _plt, _save

    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    pooled = np.concatenate([s["uncertain"] for s in reference["splits"].values()])
    bins = np.linspace(0, max(0.05, float(pooled.max())) * 1.05, 30)
    for split, figures in reference["splits"].items():
        n = len(figures["uncertain"])
        ax1.hist(figures["uncertain"], bins=bins, alpha=0.55, label=f"{split} ({n})")
        ax2.hist(figures["margin"], bins=30, range=(0, 1), alpha=0.55, label=split)
    for q, style in ((50, ":"), (75, "--"), (90, "-.")):
        ax1.axvline(float(np.percentile(pooled, q)), color="k", ls=style, lw=1, label=f"p{q}")
    ax1.set(xlabel=f"share of pixels with top probability < {reference['threshold']:g}",
            ylabel="images", title="uncertain per image")
    ax2.set(xlabel="mean top - second probability", title="margin per image")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def write(bundle: Path, reference: Dict[str, Any]) -> Path:
    """Chart and summary into ``report/``, the reference into the manifest (schema_version
    2), the new report files hashed into its ``files``; the other entries are kept as they
    were (the bundle was verified first: nothing unverified is re-hashed)."""
    bundle = Path(bundle)
    manifest = mf.load_manifest(bundle)
    report = bundle / "report"
    report.mkdir(exist_ok=True)
    chart(reference, report / CHART, f"{manifest.name} {manifest.version}: quality reference "
                                     f"({reference.get('target')})")
    (report / "reference.json").write_text(json.dumps(summary(reference), indent=2) + "\n")
    from build_models.bundle import add_files

    return add_files(bundle, [f"report/{CHART}", "report/reference.json"],
                     reference=reference, schema_version=mf.SCHEMA_VERSION)


def add_reference(bundle: Path, data_dir: Path, threshold: float = DEFAULT_THRESHOLD,
                  target: Optional[str] = None, limit: Optional[int] = MAX_PER_SPLIT,
                  device: str = "CPU") -> Dict[str, Any]:
    """Verify ``bundle``, measure its reference on ``data_dir``, write it, verify again."""
    from build_models.verify import verify

    problems = mf.verify_bundle(bundle)
    if problems:
        raise BundleError("bundle does not verify, no reference added: " + "; ".join(problems))
    reference = compute(bundle, data_dir, threshold, target=target, limit=limit,
                        device=device)
    write(bundle, reference)
    problems = verify(bundle)["problems"]
    if problems:
        raise BundleError("bundle with its reference does not verify: " + "; ".join(problems))
    return reference


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(prog="segedge-build reference", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--bundle", required=True, help="bundle version directory")
    parser.add_argument("--data", required=True, help="Oxford-IIIT Pet folder (val, test)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help="a pixel is uncertain below this top-class probability")
    parser.add_argument("--target", help="target whose model runs (default: cpu, npu, gpu, "
                                         "myriad: the first built)")
    parser.add_argument("--limit", type=int, default=MAX_PER_SPLIT,
                        help="images per split at most (evenly spaced)")
    args = parser.parse_args(argv)
    if not 0.5 <= args.threshold < 1.0:
        raise BundleError(f"--threshold must be >= 0.5 and < 1, got {args.threshold}")
    reference = add_reference(Path(args.bundle), Path(args.data), args.threshold,
                              args.target, args.limit)
    return {"bundle": str(args.bundle), "reference": summary(reference)}
