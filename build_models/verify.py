"""Check a bundle without torch: schema, checksums, and every model reads and runs on CPU.

    python -m build_models.verify models/pets-mobile/2026.01.01-000000 [--no-run]

Exit status 0 when good, 1 with one line per problem otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from build_models.errors import HelpFormatter
from edge_agent.bundle import manifest as mf
from edge_agent.bundle import schema


def schema_problems(bundle: Path) -> List[str]:
    """Every way manifest.json breaks the shipped schema (edge_agent's package data).

    A missing or unreadable schema is a problem, never a silent pass.
    """
    path = Path(bundle) / mf.MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [f"{path}: schema: {line}" for line in mf.schema_errors(data)]
    except schema.SchemaError as exc:
        return [f"{path}: {exc}"]
    except (OSError, ValueError, RecursionError) as exc:
        return [f"{path}: unreadable manifest: {exc}"]


def run_target(bundle: Path, manifest: mf.Manifest, entry: mf.TargetEntry,
               core: Any) -> Optional[str]:
    """Compile the target's model on CPU and run one zero frame; None when fine."""
    from edge_agent.inference import ovcompat  # openvino loads only when models run

    path = Path(bundle) / entry.model
    try:
        blob = mf.read_model(bundle, entry)  # run the bytes that were hashed
        model = ovcompat.read_model_bytes(core, blob.model, blob.weights, path.suffix,
                                          manifest.input.name, list(manifest.input.shape))
        names = {n for o in model.outputs for n in o.get_names()}
        if manifest.output.name not in names:
            return f"{path}: no output named '{manifest.output.name}' (has {sorted(names)})"
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        frame = np.zeros(manifest.input.shape, np.float32)
        out = compiled.create_infer_request().infer({manifest.input.name: frame})
        shape = list(out[compiled.output(manifest.output.name)].shape)
    except Exception as exc:  # any OpenVINO failure is a reason to refuse the bundle
        return f"{path}: does not run on CPU: {exc}".splitlines()[0]
    if shape != list(manifest.output.shape):
        return f"{path}: output shape {shape} != manifest {manifest.output.shape}"
    return None


def verify(bundle: Path, run: bool = True, targets: Optional[Sequence[str]] = None
           ) -> Dict[str, Any]:
    """Return {'bundle', 'ok', 'problems', 'warnings', 'targets'} for a bundle directory."""
    bundle = Path(bundle)
    problems = mf.verify_bundle(bundle, targets)
    warnings: List[str] = []
    checked: List[str] = []
    schema_lines = schema_problems(bundle) if (bundle / mf.MANIFEST_NAME).is_file() else []
    if schema_lines:  # every violation, in place of the reader's first one
        problems = [p for p in problems if ": schema: " not in p and p not in schema_lines]
        problems += schema_lines
    if (bundle / mf.MANIFEST_NAME).is_file() and not problems:
        manifest = mf.load_manifest(bundle)
        listed = {f.path: f for f in manifest.files}
        for entry in manifest.targets.values():
            for f in entry.files:
                if listed.get(f.path) != f:
                    problems.append(f"{bundle / mf.MANIFEST_NAME}: targets.{entry.name} file "
                                    f"{f.path} differs from the top-level files list")
        present = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
        extra = sorted(present - set(listed) - {mf.MANIFEST_NAME})
        warnings += [f"{bundle / p}: not listed in the manifest" for p in extra]
        if run and not problems:
            import openvino as ov

            core = ov.Core()
            for name in targets or manifest.targets:
                if name in manifest.targets:
                    problem = run_target(bundle, manifest, manifest.targets[name], core)
                    problems += [problem] if problem else []
                    checked.append(name)
    return {"step": "verify", "bundle": str(bundle), "ok": not problems, "problems": problems,
            "warnings": warnings, "targets_run": checked}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(prog="segedge-build verify", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("bundle", help="bundle version directory (holds manifest.json)")
    parser.add_argument("--targets", help="comma list: only check these targets' files")
    parser.add_argument("--no-run", dest="run", action="store_false",
                        help="checksums and schema only, do not compile the models")
    parser.add_argument("--report", help="also write the result as JSON here")
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t] if args.targets else None
    result = verify(Path(args.bundle), args.run, targets)
    if args.report:
        Path(args.report).write_text(json.dumps(result, indent=2) + "\n")
    for line in result["warnings"]:
        print(f"warning: {line}", file=sys.stderr)
    for line in result["problems"]:
        print(f"problem: {line}", file=sys.stderr)
    print(f"{args.bundle}: {'OK' if result['ok'] else 'FAILED'}"
          f" (ran on CPU: {', '.join(result['targets_run']) or 'none'})")
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
