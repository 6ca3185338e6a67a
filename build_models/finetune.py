"""Bundle N + corrected field samples -> bundle N+1, compared with N on the same data.

    segedge-build finetune --from models/pets-mobile/1.0.0 --data data/oxford-iiit-pet \\
        --samples deploy/collected --out models

The checkpoint: the bundle's manifest records the sha256 of the checkpoint it was built
from (``source_checkpoint``). ``--checkpoint PATH`` names it; without it the bundle's own
``checkpoint.pt`` (``export``/``all --keep-checkpoint``, and every finetune result) is
used, then the training run's ``best.pt`` the bundle's report names. A file whose sha256
is not the recorded one is refused. Training starts from that checkpoint's weights on
the original training split plus the samples' training share (fewer epochs, a lower
learning rate); every ``--holdout-every``-th usable sample of each folder is held out.
The result keeps the name, takes the next version (patch, or ``--bump minor``), keeps its
own checkpoint, records its parent in ``source_checkpoint`` and compares N and N+1 on the
test split and on the held-out samples (``report/finetune.json``, ``finetune.png``).
A sample whose trimap is still the device's pre-label (its sidecar's sha256) was not
corrected and is left out unless ``--uncorrected``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from build_models import data
from build_models.errors import BuildError, HelpFormatter
from edge_agent.bundle import manifest as mf

CHECKPOINT_NAME = "checkpoint.pt"
SIDECARS = Path("annotations") / "samples"
MAX_DEPTH = 4  # --samples DIR: a sample folder, or folders of them this deep (host/camera)
DEFAULT_EPOCHS, DEFAULT_LR, DEFAULT_HOLDOUT = 5, 2e-4, 5


@dataclasses.dataclass
class SampleSet:
    """One sample folder (Pet layout): what is used for training and what is held out."""

    root: Path
    train: List[data.Pair]
    held_out: List[data.Pair]
    uncorrected: int = 0
    problems: List[str] = dataclasses.field(default_factory=list)

    def summary(self) -> Dict[str, Any]:
        return {"dir": str(self.root), "train": len(self.train), "held_out": len(self.held_out),
                "uncorrected_skipped": self.uncorrected, "problems": self.problems[:20]}


# --- the checkpoint --------------------------------------------------------------------
def find_checkpoint(bundle: Path, manifest: mf.Manifest, given: Optional[str]) -> Path:
    """The checkpoint bundle N was built from, its sha256 checked against the manifest."""
    expected = str(manifest.source_checkpoint.get("sha256", ""))
    where = f"{manifest.name} {manifest.version}"
    if given:
        candidates = [Path(given)]
    else:
        candidates = [bundle / CHECKPOINT_NAME]
        report = bundle / "report" / "report.json"
        try:
            recorded = json.loads(report.read_text()).get("checkpoint")
        except (OSError, ValueError, AttributeError):
            recorded = None
        if isinstance(recorded, str) and recorded:
            candidates.append(Path(recorded))
    for path in candidates:
        if not path.is_file():
            continue
        got = mf.sha256_file(path)
        if got != expected:
            raise BuildError(f"{path}: sha256 {got[:16]}... is not the checkpoint of {where} "
                             f"(its manifest records {expected[:16]}...): refused")
        return path
    raise BuildError(f"no checkpoint for {where}: {bundle / CHECKPOINT_NAME} is absent and "
                     f"the training run's best.pt is gone; pass --checkpoint (the file whose "
                     f"sha256 is {expected[:16]}...), or build bundles with --keep-checkpoint")


# --- the samples -----------------------------------------------------------------------
def sample_folders(root: Path, depth: int = MAX_DEPTH) -> List[Path]:
    """``root`` when it is a Pet folder (annotations/trainval.txt), else the Pet folders
    under it (a collected tree: <host>/<camera>/), sorted; symlinks are not followed."""
    if (root / "annotations" / "trainval.txt").is_file():
        return [root]
    if depth <= 0 or not root.is_dir() or root.is_symlink():
        return []
    found: List[Path] = []
    for child in sorted(root.iterdir()):
        if child.is_dir() and not child.is_symlink():
            found += sample_folders(child, depth - 1)
    return found


def _uncorrected(root: Path, pair: data.Pair) -> bool:
    """True when the trimap is byte for byte the pre-label the device wrote."""
    try:
        side = json.loads((root / SIDECARS / f"{pair.name}.json").read_text())
        recorded = side["prelabel"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False  # not a device sample (a person's own pair): labelled by them
    return hashlib.sha256(pair.trimap.read_bytes()).hexdigest() == recorded


def read_samples(root: Path, holdout_every: int, uncorrected: bool) -> SampleSet:
    """The folder's usable pairs (oldest first), every ``holdout_every``-th held out."""
    try:
        scan = data.scan_split(root, "trainval")
        pairs, problems = list(scan.pairs), list(scan.problems)
    except data.DataError as exc:
        pairs, problems = [], [str(exc)]
    skipped = 0
    usable = []
    for pair in sorted(pairs, key=lambda p: p.name):
        if not uncorrected and _uncorrected(root, pair):
            skipped += 1
            continue
        usable.append(pair)
    held = [p for i, p in enumerate(usable) if holdout_every and i % holdout_every
            == holdout_every - 1]
    train = [p for p in usable if p not in held]
    return SampleSet(root, train, held, skipped, problems)


def stage_pairs(pairs: Sequence[data.Pair], dest: Path) -> Path:
    """A Pet folder holding ``pairs`` (hard links, copies across file systems), for
    ``train --extra-data``; names made unique across sample folders."""
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "images").mkdir(parents=True)
    (dest / "annotations" / "trimaps").mkdir(parents=True)
    names: List[str] = []
    for n, pair in enumerate(pairs):
        name = pair.name if pair.name not in names else f"{pair.name}-{n}"
        for src, out in ((pair.image, dest / "images" / f"{name}.jpg"),
                         (pair.trimap, dest / "annotations" / "trimaps" / f"{name}.png")):
            try:
                out.hardlink_to(src)
            except OSError:
                shutil.copyfile(src, out)
        names.append(name)
    (dest / "annotations" / "trainval.txt").write_text("\n".join(names) + "\n")
    return dest


# --- versions --------------------------------------------------------------------------
def next_version(version: str, bump: str = "patch") -> str:
    """N+1: ``1.2.3`` -> ``1.2.4`` (``minor``: ``1.3.0``); a version that is not
    MAJOR.MINOR.PATCH gets the build's default, the UTC time (sortable, later)."""
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", version)
    if not m:
        return dt.datetime.now(dt.timezone.utc).strftime("%Y.%m.%d-%H%M%S")
    major, minor, patch = (int(x) for x in m.groups())
    return f"{major}.{minor + 1}.0" if bump == "minor" else f"{major}.{minor}.{patch + 1}"


# --- N against N+1 ---------------------------------------------------------------------
def compare(parent: Path, child: Path, splits: Dict[str, List[data.Pair]], target: str,
            progress: bool = False) -> Dict[str, Dict[str, Any]]:
    """Dice / pet IoU of both bundles' ``target`` model (what devices run), through
    OpenVINO on CPU in f32, on each named list of pairs (empty lists: None)."""
    from build_models import evaluate

    man = mf.load_manifest(child)
    size, mode = man.input.shape[2], man.model["label_mode"]
    nc = len(man.classes)
    rows: Dict[str, Dict[str, Any]] = {}
    for split, pairs in splits.items():
        rows[split] = {"images": len(pairs)}
        if not pairs:
            rows[split].update(parent=None, child=None)
            continue
        items = data.PetData(pairs, size, mode)
        for key, bundle in (("parent", parent), ("child", child)):
            entry = mf.load_manifest(bundle).targets[target]
            compiled, _ = evaluate.compile_ov(bundle / entry.model, "f32")
            scores = evaluate.measure_accuracy(evaluate.ov_infer(compiled), items, nc,
                                               desc=f"{key} {split}", progress=progress)
            rows[split][key] = {k: round(scores[k], 6) for k in ("dice", "fg_iou", "fg_dice")}
        rows[split]["delta_dice"] = round(rows[split]["child"]["dice"]
                                          - rows[split]["parent"]["dice"], 6)
    return rows


def table(rows: Dict[str, Dict[str, Any]], parent: str, child: str) -> str:
    """The comparison as a Markdown table (the report's and the command's output)."""
    lines = [f"| split | images | Dice {parent} | Dice {child} | ΔDice | pet IoU {parent} | "
             f"pet IoU {child} |", "|---|---|---|---|---|---|---|"]
    for split, r in rows.items():
        if r.get("parent") is None:
            lines.append(f"| {split} | 0 | | | | | |")
            continue
        p, c = r["parent"], r["child"]
        lines.append(f"| {split} | {r['images']} | {p['dice']:.4f} | {c['dice']:.4f} | "
                     f"{r['delta_dice']:+.4f} | {p['fg_iou']:.4f} | {c['fg_iou']:.4f} |")
    return "\n".join(lines) + "\n"


def plot(rows: Dict[str, Dict[str, Any]], parent: str, child: str, path: Path) -> Path:
    """Grouped bars: Dice and pet IoU of N and N+1 per split."""
    import numpy as np

    from build_models.report import _plt, _save

    plt = _plt()
    splits = [s for s, r in rows.items() if r.get("parent")]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), squeeze=False)
    x = np.arange(len(splits))
    for ax, metric, title in ((axes[0][0], "dice", "Dice (micro)"),
                              (axes[0][1], "fg_iou", "pet IoU")):
        for off, key, label in ((-0.2, "parent", parent), (0.2, "child", child)):
            bars = ax.bar(x + off, [rows[s][key][metric] for s in splits], 0.4, label=label)
            ax.bar_label(bars, fmt="%.3f", fontsize=7)
        ax.set_xticks(x, [f"{s}\n({rows[s]['images']} images)" for s in splits])
        ax.set(ylim=(0, 1.1), title=title)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{parent} vs {child}, same images", fontsize=9)
    return _save(fig, path)


def attach(bundle: Path, files: Dict[str, Path], lineage: Dict[str, Any]) -> None:
    """Add report files and the lineage to a built bundle: the manifest lists and hashes
    the new files, ``source_checkpoint`` gains ``parent`` and ``finetune``; verified."""
    for rel, src in files.items():
        if Path(src) != bundle / rel:
            shutil.copyfile(src, bundle / rel)
    man = mf.load_manifest(bundle)
    listed = sorted((mf.file_entry(bundle, p) for p in bundle.rglob("*")
                     if p.is_file() and p.name != mf.MANIFEST_NAME), key=lambda f: f.path)
    mf.write_manifest(bundle, dataclasses.replace(
        man, files=listed, source_checkpoint={**man.source_checkpoint, **lineage}))
    problems = mf.verify_bundle(bundle)
    if problems:
        raise BuildError("fine-tuned bundle does not verify: " + "; ".join(problems))


# --- the command -----------------------------------------------------------------------
def finetune(args: argparse.Namespace, train_args: List[str]) -> Dict[str, Any]:
    from build_models import bundle as bundle_step
    from build_models import train

    parent = Path(args.source)
    problems = mf.verify_bundle(parent)
    if problems:
        raise BuildError(f"{parent}: bundle N does not verify: {problems[0]}")
    man = mf.load_manifest(parent)
    ckpt = find_checkpoint(parent, man, args.checkpoint)
    version = args.version or next_version(man.version, args.bump)
    if (Path(args.out) / man.name / version).exists() and not args.force:
        raise BuildError(f"{Path(args.out) / man.name / version} exists (pass --force, or "
                         f"--version)")
    sets = [read_samples(folder, args.holdout_every, args.uncorrected)
            for root in args.samples for folder in sample_folders(Path(root))]
    used = [p for s in sets for p in s.train]
    if not used:
        found = "; ".join(f"{s.root}: {s.uncorrected} uncorrected, {len(s.problems)} bad"
                          for s in sets) or "no Pet folder (annotations/trainval.txt) found"
        raise BuildError(f"no corrected samples to train on in {', '.join(args.samples)} "
                         f"({found})")
    run_dir = Path(args.run_dir or Path("runs") / f"{man.name}-{version}")
    staged = stage_pairs(used, run_dir / "samples-train")
    trained = train.main(["--data", args.data, "--out", str(run_dir), "--init-from", str(ckpt),
                          "--extra-data", str(staged), "--epochs", str(args.epochs),
                          "--lr", str(args.lr), *([] if args.progress else ["--no-progress"]),
                          *(["--strict"] if args.strict else []), *train_args])
    export = ["--checkpoint", trained["checkpoint"], "--data", args.data, "--out", args.out,
              "--name", man.name, "--version", version, "--keep-checkpoint",
              "--targets", args.targets or ",".join(man.targets),
              *([] if args.progress else ["--no-progress"]),
              *(["--force"] if args.force else []), *(["--strict"] if args.strict else [])]
    for key in ("eval_limit", "calib_size", "tolerance", "overlays", "speed_iterations"):
        if getattr(args, key) is not None:
            export += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    built = bundle_step.main(export)
    child = Path(built["bundle"])
    target = "cpu" if "cpu" in man.targets and "cpu" in mf.load_manifest(child).targets \
        else next(t for t in mf.load_manifest(child).targets if t in man.targets
                  and man.targets[t].format == "openvino_ir")
    test = data.scan_split(Path(args.data), "test", strict=args.strict).pairs
    test = test[: args.eval_limit] if args.eval_limit else test
    held = [p for s in sets for p in s.held_out]
    rows = compare(parent, child, {"test": test, "held-out samples": held}, target,
                   args.progress)
    names = (man.version, version)
    report_dir = run_dir / "finetune"
    report_dir.mkdir(parents=True, exist_ok=True)
    result = {"step": "finetune", "parent": {"name": man.name, "version": man.version,
                                             "checkpoint_sha256": man.source_checkpoint["sha256"]},
              "bundle": str(child), "version": version, "target": target,
              "samples": [s.summary() for s in sets], "comparison": rows,
              "table": table(rows, *names), "train": {k: trained[k] for k in (
                  "checkpoint", "best_val_dice", "epochs_run", "stopped_by")},
              "epochs": args.epochs, "lr": args.lr, "holdout_every": args.holdout_every}
    (report_dir / "finetune.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (report_dir / "finetune.md").write_text(f"# {man.name} {names[0]} -> {names[1]}\n\n"
                                            + result["table"])
    plot(rows, *names, report_dir / "finetune.png")
    attach(child, {f"report/{n}": report_dir / n for n in ("finetune.json", "finetune.md",
                                                          "finetune.png")},
           {"parent": result["parent"],
            "finetune": {"samples": [s.summary() for s in sets], "epochs": args.epochs,
                         "lr": args.lr, "holdout_every": args.holdout_every,
                         "held_out": len(held), "trained_on": len(used)}})
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", required=True, metavar="BUNDLE",
                   help="bundle N (a version folder with manifest.json)")
    p.add_argument("--data", required=True, help="the Oxford-IIIT Pet folder N was built from "
                                                 "(training, validation, test)")
    p.add_argument("--samples", required=True, action="append", metavar="DIR",
                   help="a corrected sample folder (Pet layout), or a tree of them such as "
                        "deploy/collected (repeatable)")
    p.add_argument("--out", required=True, help="bundle root: OUT/<name>/<N+1>")
    p.add_argument("--checkpoint", help="N's checkpoint (default: BUNDLE/checkpoint.pt, then "
                                        "the best.pt its report names); its sha256 must be "
                                        "the manifest's source_checkpoint.sha256")
    p.add_argument("--version", help="N+1's version (default: N's with the patch bumped)")
    p.add_argument("--bump", choices=("patch", "minor"), default="patch")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    p.add_argument("--lr", type=float, default=DEFAULT_LR)
    p.add_argument("--holdout-every", type=int, default=DEFAULT_HOLDOUT,
                   help="every Nth usable sample of each folder is held out for the "
                        "comparison (0: none)")
    p.add_argument("--uncorrected", action="store_true",
                   help="also train on samples whose trimap is still the device's pre-label")
    p.add_argument("--run-dir", help="training run directory (default runs/<name>-<N+1>)")
    p.add_argument("--targets", help="default: N's targets")
    for flag, kind in (("--eval-limit", int), ("--calib-size", int), ("--tolerance", float),
                       ("--overlays", int), ("--speed-iterations", int)):
        p.add_argument(flag, type=kind, help="as for export")
    p.add_argument("--force", action="store_true", help="replace an existing N+1")
    p.add_argument("--strict", action="store_true", help="bad data is fatal")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(prog="segedge-build finetune", description=__doc__ +
                                     "\nUnknown options are passed to 'train' (e.g. "
                                     "--batch-size, --threads).",
                                     formatter_class=HelpFormatter)
    add_arguments(parser)
    argv = sys.argv[1:] if argv is None else argv
    args, rest = parser.parse_known_args([a for a in argv if a != "--"])
    if args.holdout_every < 0 or args.epochs < 1:
        raise BuildError("--holdout-every must be >= 0 and --epochs >= 1")
    return finetune(args, rest)


if __name__ == "__main__":
    main()
