"""Bundle -> model repository that OpenVINO Model Server and Triton both read.

    segedge-build repository BUNDLE_DIR --out models/repository

One tree per target, each a complete repository for one server on one kind of box:

    <out>/<target>/config.json                       OVMS (model_config_list)
    <out>/<target>/<name>/config.pbtxt               Triton, OpenVINO backend
    <out>/<target>/<name>/<version>/model.xml|bin    integer version (see ``repository_version``)

The served IR is the bundle's IR with the agent's own graph steps added (the same
``ovcompat`` calls the local engine makes): it takes the agent's preprocessed frame,
u8 ``[1,H,W,3]`` BGR, and returns the u8 class map ``[1,H,W]`` named ``classes``. So the
device sends a quarter of the bytes of an f32 tensor and gets back the decided mask.
Versions accumulate (a later bundle adds a directory); the version policy keeps the two
newest loaded so a ``reload`` of the agent can switch between them. Docs: docs/bundle.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from build_models.errors import BundleError, HelpFormatter
from edge_agent.bundle import manifest as mf
from edge_agent.inference.remote import SERVED_OUTPUT, repository_version

#: what the agent's local engine uses too (engine.Engine._properties, THROUGHPUT hint)
PLUGIN_CONFIG = {"PERFORMANCE_HINT": "THROUGHPUT"}
NUM_VERSIONS = 2  # the two newest versions stay loaded: a reload can go back and forth


def served_model(bundle: Path, target: str) -> Any:
    """The target's IR + the agent's preprocessing + the class decision (ov.Model)."""
    from edge_agent.inference import ovcompat

    opened = mf.OpenedBundle.open(str(bundle), target)
    man, spec = opened.manifest, opened.manifest.input
    if opened.target.format != "openvino_ir":
        raise BundleError(f"target {target}: {opened.target.format} is not an OpenVINO IR")
    core = ovcompat.new_core("")
    blob = mf.read_model(bundle, opened.target)
    model = ovcompat.read_model_bytes(core, blob.model, blob.weights, blob.path.suffix,
                                      spec.name, list(spec.shape))
    scale = 255.0 if spec.value_range and float(spec.value_range[-1]) <= 1.0 else 1.0
    caller = spec.normalization == "caller"
    model = ovcompat.add_preprocessing(model, spec.name, spec.color_order,
                                       mean=spec.mean if caller else None,
                                       std=spec.std if caller else None, scale=scale)
    index = ovcompat.output_index(model, man.output.name)
    model = ovcompat.append_class_decision(model, index, man.output.kind or "logits")
    model.outputs[index].get_tensor().set_names({SERVED_OUTPUT})
    return model


def ovms_config(name: str, target: str) -> Dict[str, Any]:
    """OVMS's config.json (schema: model_server src/schema.cpp, MODELS_CONFIG_SCHEMA);
    ``base_path`` is relative to the config file, as OVMS resolves it."""
    return {"model_config_list": [{"config": {
        "name": name, "base_path": name, "target_device": mf.TARGET_DEVICES[target],
        "model_version_policy": {"latest": {"num_versions": NUM_VERSIONS}},
        "plugin_config": dict(PLUGIN_CONFIG)}}]}


def triton_config(name: str, hw: Sequence[int]) -> str:
    """Triton's config.pbtxt (ModelConfig text format) for its OpenVINO backend."""
    h, w = int(hw[0]), int(hw[1])
    params = "\n".join(f'parameters: {{ key: "{k}" value: {{ string_value: "{v}" }} }}'
                       for k, v in PLUGIN_CONFIG.items())
    return (f'name: "{name}"\nbackend: "openvino"\nmax_batch_size: 0\n'
            f"version_policy: {{ latest: {{ num_versions: {NUM_VERSIONS} }} }}\n"
            f'input [ {{ name: "image" data_type: TYPE_UINT8 dims: [ 1, {h}, {w}, 3 ] }} ]\n'
            f'output [ {{ name: "{SERVED_OUTPUT}" data_type: TYPE_UINT8 '
            f"dims: [ 1, {h}, {w} ] }} ]\n"
            f"instance_group [ {{ kind: KIND_CPU }} ]\n{params}\n")


def add_bundle(bundle: Path, out: Path, targets: Optional[Sequence[str]] = None
               ) -> Dict[str, Any]:
    """Write (or refresh) ``out/<target>/…`` for each IR target of ``bundle``."""
    import openvino as ov

    bundle, out = Path(bundle), Path(out)
    man = mf.load_manifest(bundle)
    version = repository_version(man.version)
    wrote: List[str] = []
    for target in targets or [t for t, e in man.targets.items() if e.format == "openvino_ir"]:
        model = served_model(bundle, target)
        root = out / target
        vdir = root / man.name / str(version)
        vdir.mkdir(parents=True, exist_ok=True)
        ov.save_model(model, str(vdir / "model.xml"), compress_to_fp16=False)
        spec = man.input
        hw = spec.shape[1:3] if spec.layout.upper() == "NHWC" else spec.shape[2:4]
        (root / man.name / "config.pbtxt").write_text(triton_config(man.name, hw))
        (root / "config.json").write_text(json.dumps(ovms_config(man.name, target),
                                                     indent=2) + "\n")
        wrote.append(str(vdir))
    return {"step": "repository", "name": man.name, "bundle_version": man.version,
            "version": version, "written": wrote}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(prog="segedge-build repository", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("bundle", help="bundle version directory (with manifest.json)")
    p.add_argument("--out", required=True, help="repository root: OUT/<target>/<name>/<n>")
    p.add_argument("--targets", help="comma-separated (default: every IR target)")
    args = p.parse_args(argv)
    targets = [t for t in (args.targets or "").split(",") if t] or None
    return add_bundle(Path(args.bundle), Path(args.out), targets)
