"""Checkpoint -> bundle: every target, evaluated, gated, reported, manifested, verified.

    python -m build_models.bundle --checkpoint runs/x/best.pt --data DIR --out models

Layout and manifest: docs/bundle.md. The bundle is assembled in ``.<version>.partial``
and renamed into place only when the INT8 accuracy gate passes and it verifies.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Union

import numpy as np

from build_models import data, tool_versions
from build_models.checkpoint import CheckpointMeta
from build_models.errors import (  # noqa: F401 - BuildError: the base
    BuildError,
    BundleError,
    HelpFormatter,
)
from edge_agent.bundle import manifest as mf

if TYPE_CHECKING:
    import openvino as ov

    from build_models.models import SegModel

#: what evaluation and export take: an IR/ONNX path or an in-memory OpenVINO model
OvModel = Union[Path, "ov.Model"]

PRECISION = {"cpu": "INT8", "gpu": "FP16", "npu": "INT8", "myriad": "FP32"}
CHECKPOINT_NAME = "checkpoint.pt"  # the kept checkpoint, beside the targets (--keep-checkpoint)


@dataclass
class BuildConfig:
    checkpoint: str
    data: str
    out: str
    name: Optional[str] = None  # default: pets-<preset>
    version: Optional[str] = None  # default: UTC time, sortable
    targets: Sequence[str] = mf.TARGETS
    calib_size: int = 300
    tolerance: float = 0.01
    accuracy_control: bool = True
    inference_precision: str = "f32"  # for evaluation on CPU: f32, bf16 or auto
    eval_split: str = "test"
    eval_limit: Optional[int] = None
    overlays: int = 4
    speed_iterations: int = 30  # CPU latency/throughput per precision in the report; 0: skip
    strict: bool = False
    force: bool = False
    progress: bool = True
    keep_checkpoint: bool = False  # copy it into the bundle as checkpoint.pt (finetune's source)


@dataclass
class Build:
    """What the steps of one build share: inputs, the staging folder and the results so far."""

    cfg: BuildConfig
    targets: List[str]
    model: SegModel  # the torch model from the checkpoint
    meta: CheckpointMeta  # the checkpoint's training record
    name: str
    version: str
    stage: Path  # .<version>.partial, renamed into place at the end
    test_scan: data.ScanResult
    test: data.PetData
    images: np.ndarray  # a few test images, NCHW f32, for parity and speed
    core: ov.Core
    metrics: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    per_target: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    quant_info: Dict[str, Any] = field(default_factory=dict)
    parity: Dict[str, Any] = field(default_factory=dict)
    speed: Dict[str, Any] = field(default_factory=dict)

    def evaluate(self, model: OvModel, label: str, with_speed: bool = True) -> Dict[str, Any]:
        """Accuracy of ``model`` on the test set; also its CPU speed into ``speed``."""
        from build_models import evaluate
        from build_models.speed import measure

        cfg = self.cfg
        compiled, used = evaluate.compile_ov(model, cfg.inference_precision, core=self.core)
        result = evaluate.measure_accuracy(evaluate.ov_infer(compiled), self.test,
                                           self.meta.num_classes, desc=label,
                                           progress=cfg.progress)
        if with_speed and cfg.speed_iterations > 0:
            hint = None if cfg.inference_precision == "auto" else cfg.inference_precision
            self.speed[label] = measure(self.core, model, [f[None] for f in self.images],
                                        cfg.speed_iterations, precision=hint)
        return {**result, "inference_precision": used}

    def check_parity(self, model: OvModel, label: str) -> None:
        from build_models import export
        from build_models.evaluate import compile_ov

        compiled = compile_ov(model, "f32", core=self.core)[0]
        self.parity[label] = export.parity(self.model, compiled, self.images)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def prepare(cfg: BuildConfig) -> Build:
    """Check the targets, load the checkpoint and the test split, make the staging folder."""
    import openvino as ov

    from build_models.checkpoint import model_from_checkpoint

    targets = [t for t in mf.TARGETS if t in cfg.targets]
    unknown = sorted(set(cfg.targets) - set(mf.TARGETS))
    if unknown or not targets:
        raise BundleError(f"unknown or no targets {unknown} (valid: {', '.join(mf.TARGETS)})")
    model, meta = model_from_checkpoint(Path(cfg.checkpoint))
    name = cfg.name or f"pets-{meta.preset}"
    version = cfg.version or _now().strftime("%Y.%m.%d-%H%M%S")
    final = Path(cfg.out) / name / version
    if final.exists() and not cfg.force:
        raise BundleError(f"{final} exists (pass --force to replace it, or another --version)")
    stage = final.parent / f".{version}.partial"
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "report").mkdir(parents=True)
    test_scan = data.scan_split(Path(cfg.data), cfg.eval_split, strict=cfg.strict)
    pairs = test_scan.pairs[: cfg.eval_limit] if cfg.eval_limit else test_scan.pairs
    test = data.PetData(pairs, meta.size, meta.label_mode)
    images = np.stack([test[i][0] for i in range(min(4, len(test)))]).transpose(0, 3, 1, 2)
    return Build(cfg, targets, model, meta, name, version, stage, test_scan, test,
                 np.ascontiguousarray(images, dtype=np.float32), ov.Core())


def int8_step(build: Build, fp32_xml: Path) -> Any:
    """PTQ INT8 with its accuracy gate (an accuracy-controlled retry when PTQ loses more
    than the tolerance); the gate's failure is a BundleError saying by how much."""
    from build_models import quantize

    cfg, metrics, core = build.cfg, build.metrics, build.core
    mode = build.meta.label_mode
    calib_scan = data.scan_split(Path(cfg.data), "train", strict=cfg.strict)
    calib = data.PetData(calib_scan.pairs[: cfg.calib_size], build.meta.size, mode)
    qcfg = quantize.QuantConfig(cfg.calib_size, cfg.tolerance, cfg.accuracy_control)
    int8, build.quant_info = quantize.quantize(core.read_model(fp32_xml), calib, qcfg)
    metrics["INT8"] = build.evaluate(int8, "INT8")
    drop = metrics["FP32"]["dice"] - metrics["INT8"]["dice"]
    build.quant_info["ptq_drop"] = drop
    if drop > cfg.tolerance and cfg.accuracy_control:
        nc = build.meta.num_classes
        int8, info = quantize.quantize_accuracy_control(
            core.read_model(fp32_xml), calib, build.test,
            lambda compiled, items: quantize.dice_of_items(compiled, items, nc), qcfg)
        build.quant_info.update(info)
        metrics["INT8"] = build.evaluate(int8, "INT8")
        drop = metrics["FP32"]["dice"] - metrics["INT8"]["dice"]
    build.quant_info["drop"] = drop
    if drop > cfg.tolerance:
        (build.stage / "report" / "report.json").write_text(json.dumps(
            {"status": "failed", "metrics": metrics, "quantization": build.quant_info},
            indent=2) + "\n")
        raise BundleError(
            f"INT8 accuracy gate failed: Dice {metrics['INT8']['dice']:.4f} is "
            f"{drop:.4f} below FP32 {metrics['FP32']['dice']:.4f} (tolerance "
            f"{cfg.tolerance}; method {build.quant_info['method']}); see {build.stage}/report")
    return int8


def myriad_step(build: Build) -> None:
    """The legacy NCS2 artefact: static-shape ONNX at an opset OpenVINO 2022.3 reads."""
    from build_models import export

    onnx_path = export.export_onnx(build.model, build.meta.size,
                                   build.stage / "myriad" / "model.onnx")
    info = export.onnx_info(onnx_path)
    if info["opset"] > export.MYRIAD_OPSET or not info["static"]:
        raise BundleError(f"{onnx_path}: opset {info['opset']}, static {info['static']} "
                          f"(MYRIAD needs opset <= {export.MYRIAD_OPSET} and a static shape)")
    build.per_target["myriad"] = build.evaluate(onnx_path, "ONNX", with_speed=False)
    build.quant_info["onnx"] = info


def models_step(build: Build, tmp: Path) -> Any:
    """FP32 (evaluated, parity), FP16 for gpu, INT8 for cpu/npu, ONNX for myriad, each
    saved into the stage; returns the model whose predictions the report shows."""
    from build_models import export

    targets, stage, metrics = build.targets, build.stage, build.metrics
    fp32 = export.to_openvino(build.model, build.meta.size)
    build.check_parity(fp32, "FP32")
    fp32_xml = export.save_ir(fp32, tmp / "fp32" / "model.xml")
    metrics["FP32"] = build.evaluate(fp32_xml, "FP32")
    fp16_xml = export.save_ir(fp32, (stage if "gpu" in targets else tmp) / "gpu" / "model.xml",
                              fp16=True)
    metrics["FP16"] = build.evaluate(fp16_xml, "FP16")
    build.check_parity(fp16_xml, "FP16")
    best: Any = fp32_xml
    if {"cpu", "npu"} & set(targets):
        best = int8_step(build, fp32_xml)
        for t in ("cpu", "npu"):
            if t in targets:
                export.save_ir(best, stage / t / "model.xml")
                build.per_target[t] = metrics["INT8"]
    if "gpu" in targets:
        build.per_target["gpu"] = metrics["FP16"]
    if "myriad" in targets:
        myriad_step(build)
    return best


def overlay_samples(build: Build, model: Any, n: int) -> List[Dict[str, Any]]:
    from build_models import evaluate

    compiled, _ = evaluate.compile_ov(model, "f32", core=build.core)
    infer = evaluate.ov_infer(compiled)
    test = build.test
    picks = np.linspace(0, len(test) - 1, num=min(n, len(test))).round().astype(int)
    samples = []
    for i in dict.fromkeys(picks.tolist()):
        image, truth = test[i]
        batch = image.transpose(2, 0, 1)[None].astype(np.float32)
        samples.append({"image": image, "truth": truth,
                        "pred": evaluate.classes_from_logits(infer(batch))[0]})
    return samples


def report_step(build: Build, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Charts, overlays and report.json in the stage's report/; returns the report."""
    from build_models.report import plot_precisions, plot_speed, save_overlays

    cfg, stage, metrics = build.cfg, build.stage, build.metrics
    title = f"{build.name} {build.version}"
    plot_precisions(metrics, stage / "report" / "accuracy.png",
                    f"{title}: {cfg.eval_split} split, {len(build.test)} images")
    save_overlays(samples, stage / "report" / "overlays.png",
                  f"{'INT8' if 'INT8' in metrics else 'FP32'} predictions ({cfg.eval_split})")
    if build.speed:
        plot_speed(build.speed, stage / "report" / "speed.png", f"{title}: CPU, batch 1")
    run_dir = Path(cfg.checkpoint).parent
    for src, dest in (("curves.png", "training_curves.png"), ("candidates.png", None),
                      ("candidates.json", None)):  # written by train / candidates chart
        if (run_dir / src).is_file():
            shutil.copyfile(run_dir / src, stage / "report" / (dest or src))
    evaluation = {"split": cfg.eval_split, "images": len(build.test),
                  "image_size": [build.meta.size, build.meta.size],
                  "metric": "Dice micro-averaged over all classes (torchmetrics "
                            "Dice(num_classes=2)); fg_iou = IoU of the pet class",
                  "metrics": {k: {m: v[m] for m in ("dice", "fg_iou", "fg_dice",
                                                    "inference_precision")}
                              for k, v in metrics.items()}}
    meta = build.meta
    report = {"step": "export", "status": "ok", "name": build.name, "version": build.version,
              "created": _now().isoformat(), "checkpoint": str(cfg.checkpoint),
              "targets": build.targets, "evaluation": evaluation,
              "per_target": build.per_target, "parity": build.parity,
              "quantization": build.quant_info, "speed": build.speed, "config": asdict(cfg),
              "data_summary": {cfg.eval_split: build.test_scan.summary()},
              "train_meta": {k: meta.to_dict().get(k) for k in (
                  "preset", "data_hash", "code_version", "train_images", "val_images", "val",
                  "pretrained")}}
    (stage / "report" / "report.json").write_text(json.dumps(report, indent=2, default=str) +
                                                  "\n")
    return report


def finish(build: Build, report: Dict[str, Any]) -> Path:
    """Manifest, the quality reference (build_models.reference: val and test through the
    agent's own graph steps, into the manifest and report/), verification of the stage,
    then the rename into place."""
    from build_models import reference
    from build_models.verify import verify

    ckpt = Path(build.cfg.checkpoint)
    if build.cfg.keep_checkpoint:  # listed and hashed like every file; never shipped
        shutil.copyfile(ckpt, build.stage / CHECKPOINT_NAME)
    manifest = make_manifest(build.stage, build.name, build.version, build.meta, ckpt,
                             build.targets, build.per_target, report["evaluation"])
    mf.write_manifest(build.stage, manifest)
    ref = reference.compute(build.stage, Path(build.cfg.data),
                            limit=build.cfg.eval_limit or reference.MAX_PER_SPLIT)
    reference.write(build.stage, ref)
    report["reference"] = reference.summary(ref)
    problems = verify(build.stage)["problems"]
    if problems:
        raise BundleError("built bundle does not verify: " + "; ".join(problems))
    final = build.stage.parent / build.version
    shutil.rmtree(final, ignore_errors=True)
    build.stage.rename(final)
    return final


def build(cfg: BuildConfig) -> Dict[str, Any]:
    """Checkpoint -> verified bundle: prepare, models (INT8 gate, myriad), report, finish."""
    started = time.monotonic()
    run = prepare(cfg)
    with tempfile.TemporaryDirectory(prefix="segedge-build-") as tmp:
        best = models_step(run, Path(tmp))
        samples = overlay_samples(run, best, cfg.overlays)
    report = report_step(run, samples)
    final = finish(run, report)
    from build_models import repository  # OVMS/Triton tree beside the bundles

    served = repository.add_bundle(final, Path(cfg.out) / "repository")
    report.update(bundle=str(final), repository=served,
                  seconds=round(time.monotonic() - started, 1))
    return report


def add_files(bundle: Path, rel_paths: Sequence[str], **changes: Any) -> Path:
    """Hash files added to a built bundle into its manifest (the other entries kept as they
    were: nothing unverified is re-hashed), with ``changes`` to other manifest fields."""
    import dataclasses

    manifest = mf.load_manifest(bundle)
    new = set(rel_paths)
    files = [f for f in manifest.files if f.path not in new]
    files += [mf.file_entry(bundle, bundle / rel) for rel in sorted(new)]
    updated = dataclasses.replace(manifest, files=sorted(files, key=lambda f: f.path),
                                  **changes)
    mf.parse_manifest(json.loads(json.dumps(updated.to_dict())))  # refuse what we would write
    return mf.write_manifest(bundle, updated)


def make_manifest(bundle: Path, name: str, version: str, meta: CheckpointMeta, ckpt: Path,
                  targets: Sequence[str], per_target: Dict[str, Dict[str, Any]],
                  evaluation: Dict[str, Any]) -> mf.Manifest:
    size, mode, arch = meta.size, meta.label_mode, meta.model
    channels = arch.out_channels
    ov_version = tool_versions()["openvino"].split("-")[0]
    entries = {}
    for t in targets:
        model_file = "myriad/model.onnx" if t == "myriad" else f"{t}/model.xml"
        paths = [model_file] if t == "myriad" else [model_file, f"{t}/model.bin"]
        acc = per_target[t]
        entries[t] = mf.TargetEntry(
            name=t, device=mf.TARGET_DEVICES[t], precision=PRECISION[t],
            format="onnx" if t == "myriad" else "openvino_ir", model=model_file,
            files=[mf.file_entry(bundle, bundle / p) for p in paths],
            min_runtime="2022.3" if t == "myriad" else ".".join(ov_version.split(".")[:2]),
            static_shape=True,
            accuracy={"dice": acc["dice"], "fg_iou": acc["fg_iou"],
                      "inference_precision": acc["inference_precision"],
                      "split": evaluation["split"], "images": evaluation["images"]})
    files = sorted((mf.file_entry(bundle, p) for p in bundle.rglob("*")
                    if p.is_file() and p.name != mf.MANIFEST_NAME), key=lambda f: f.path)
    return mf.Manifest(
        name=name, version=version, created=_now().strftime("%Y-%m-%dT%H:%M:%SZ"),
        tools=tool_versions(),
        source_checkpoint={"file": ckpt.name, "sha256": mf.sha256_file(ckpt),
                           "data_hash": meta.data_hash, "code_version": meta.code_version,
                           **({"kept": CHECKPOINT_NAME} if (bundle / CHECKPOINT_NAME).is_file()
                              else {})},
        model={"architecture": arch.arch, "encoder": arch.encoder,
               "preset": meta.preset, "label_mode": mode,
               "encoder_weights": arch.encoder_weights, "pretrained": meta.pretrained,
               "decoder_channels": arch.to_dict()["decoder_channels"],
               "normalization_inside": {"mean": list(arch.mean), "std": list(arch.std),
                                        "scale": 255.0},
               "postprocess": "logit > 0 is class 1" if channels == 1 else "argmax over C"},
        input=mf.TensorSpec(name="image", shape=[1, 3, size, size], element_type="f32",
                            layout="NCHW", color_order="RGB", value_range=[0.0, 255.0],
                            normalization="inside_model"),
        output=mf.TensorSpec(name="logits", shape=[1, channels, size, size], element_type="f32",
                             layout="NCHW", color_order="", value_range=[], kind="logits"),
        classes=list(data.CLASSES[mode]), targets=entries, evaluation=evaluation, files=files)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="best.pt from segedge-build train")
    p.add_argument("--data", required=True, help="Oxford-IIIT Pet folder (test + calibration)")
    p.add_argument("--out", required=True, help="bundles go to OUT/<name>/<version>")
    p.add_argument("--name", help="bundle name (default pets-<preset>)")
    p.add_argument("--version", help="bundle version (default: UTC time)")
    p.add_argument("--targets", default=",".join(mf.TARGETS),
                   help="comma list of cpu,gpu,npu,myriad (default all)")
    p.add_argument("--calib-size", type=int, default=300, help="INT8 calibration images")
    p.add_argument("--tolerance", type=float, default=0.01, help="max INT8 Dice drop")
    p.add_argument("--no-accuracy-control", dest="accuracy_control", action="store_false")
    p.add_argument("--inference-precision", choices=("f32", "bf16", "auto"), default="f32",
                   help="CPU inference precision for evaluation (auto: bf16 where supported)")
    p.add_argument("--eval-split", choices=("test", "val"), default="test")
    p.add_argument("--eval-limit", type=int, help="evaluate on at most N images")
    p.add_argument("--overlays", type=int, default=4, help="sample overlays in the report")
    p.add_argument("--speed-iterations", type=int, default=30,
                   help="CPU latency/throughput iterations per precision (0: skip)")
    p.add_argument("--strict", action="store_true", help="bad data is fatal")
    p.add_argument("--force", action="store_true", help="replace an existing version")
    p.add_argument("--keep-checkpoint", action="store_true",
                   help="copy the checkpoint into the bundle as checkpoint.pt (listed and "
                        "hashed; never shipped to devices): what 'segedge-build finetune' "
                        "starts from")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    values = vars(args).copy()
    values["targets"] = tuple(t.strip() for t in values["targets"].split(",") if t.strip())
    known = set(BuildConfig.__dataclass_fields__)
    return BuildConfig(**{k: v for k, v in values.items() if k in known})


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(prog="segedge-build export", description=__doc__,
                                     formatter_class=HelpFormatter)
    add_arguments(parser)
    return build(config_from_args(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
