"""``segedge-build``: fetch | train | export | verify | repository | reference | all |
finetune.

    segedge-build all --data DIR --out models -- --epochs 40     # dataset -> verified bundle
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from build_models.errors import INSTALL_HINT, BuildError, HelpFormatter, missing_build_extra

COMMANDS = {
    "fetch": "download + unpack the official Oxford-IIIT Pet tarballs",
    "train": "train a model on a Pet folder -> checkpoint",
    "export": "checkpoint -> bundle (all targets, INT8 gate, report, manifest, verified)",
    "verify": "check a bundle without torch (schema, checksums, runs on CPU)",
    "repository": "bundle -> OVMS/Triton model repository (KServe v2 servers)",
    "reference": "add the quality reference (val/test confidence figures) to a built bundle",
    "finetune": "bundle N + corrected field samples -> bundle N+1, compared with N",
    "all": "dataset folder -> trained checkpoint -> verified bundle, in one command",
}


def run_all(argv: Sequence[str]) -> Dict[str, Any]:
    """``all``: its own options; everything else (e.g. --epochs, --preset) goes to train."""
    from build_models import bundle, train

    p = argparse.ArgumentParser(prog="segedge-build all", description=COMMANDS["all"] +
                                ". Unknown options are passed to 'train'.",
                                formatter_class=HelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="bundle root: OUT/<name>/<version>")
    p.add_argument("--run-dir", help="training run directory (default runs/<name>)")
    for flag in ("--name", "--version", "--targets", "--eval-limit", "--calib-size",
                 "--tolerance", "--inference-precision", "--overlays", "--speed-iterations"):
        p.add_argument(flag)
    p.add_argument("--force", action="store_true")
    p.add_argument("--keep-checkpoint", action="store_true",
                   help="copy the checkpoint into the bundle (what finetune starts from)")
    p.add_argument("--strict", action="store_true")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args, rest = p.parse_known_args([a for a in argv if a != "--"])
    run_dir = args.run_dir or str(Path("runs") / (args.name or "segedge"))
    common = (["--strict"] if args.strict else []) + ([] if args.progress else ["--no-progress"])
    trained = train.main(["--data", args.data, "--out", run_dir, *common, *rest])
    export_args = ["--checkpoint", trained["checkpoint"], "--data", args.data, "--out", args.out,
                   *common, *(["--force"] if args.force else []),
                   *(["--keep-checkpoint"] if args.keep_checkpoint else [])]
    for key in ("name", "version", "targets", "eval_limit", "calib_size", "tolerance",
                "inference_precision", "overlays", "speed_iterations"):
        value = getattr(args, key)
        if value is not None:
            export_args += [f"--{key.replace('_', '-')}", str(value)]
    built = bundle.main(export_args)
    return {"step": "all", "train": {k: trained[k] for k in ("checkpoint", "best_val_dice",
                                                             "epochs_run", "stopped_by")},
            "bundle": built["bundle"], "evaluation": built["evaluation"]}


def dispatch(command: str, argv: List[str]) -> Dict[str, Any]:
    if command == "fetch":
        from build_models.fetch import main as step
    elif command == "train":
        from build_models.train import main as step
    elif command == "export":
        from build_models.bundle import main as step
    elif command == "verify":
        from build_models.verify import main as step
    elif command == "repository":
        from build_models.repository import main as step
    elif command == "reference":
        from build_models.reference import main as step
    elif command == "finetune":
        from build_models.finetune import main as step
    else:
        step = run_all
    return step(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        from edge_agent import __version__

        print(f"segedge-build {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = "\n".join(f"  {c:<{width}}  {h}" for c, h in COMMANDS.items())
        print(f"usage: segedge-build [--version] COMMAND [options]\n\ncommands:\n{lines}\n\n"
              f"'segedge-build COMMAND --help' for a command's options; all but verify need "
              f"the build extra ({INSTALL_HINT})", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        result = dispatch(argv[0], argv[1:])
    except (BuildError, ValueError) as exc:
        print(f"segedge-build {argv[0]}: error: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        missing = missing_build_extra(exc)
        if not missing:
            raise
        print(f"segedge-build {argv[0]}: needs the build extra (no module '{missing}'): "
              f"{INSTALL_HINT}", file=sys.stderr)
        return 3
    if argv[0] != "verify" and not result.get("rank"):  # under torchrun: rank 0 speaks
        keys = ("bundle", "checkpoint", "evaluation", "best_val_dice", "dest", "repository",
                "written", "version", "reference", "parent", "samples", "comparison")
        print(json.dumps({k: result[k] for k in keys if k in result}, indent=2, default=str))
    return 0 if result.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
