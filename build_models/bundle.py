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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from build_models import data as D
from build_models import tool_versions
from edge_agent import manifest as mf

PRECISION = {"cpu": "INT8", "gpu": "FP16", "npu": "INT8", "myriad": "FP32"}


class BuildError(Exception):
    """The bundle cannot be built as asked (e.g. the INT8 accuracy gate failed)."""


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


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _evaluate(model: Any, test: D.PetData, classes: int, cfg: BuildConfig, label: str,
              core: Any, speed: Optional[Dict[str, Any]] = None,
              frames: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """Accuracy of ``model`` on ``test``; with ``speed``, also its CPU speed into it."""
    from build_models import evaluate as E
    from build_models.speed import measure

    compiled, used = E.compile_ov(model, cfg.inference_precision, core=core)
    result = E.validate(E.ov_infer(compiled), test, classes, desc=label, progress=cfg.progress)
    if speed is not None and cfg.speed_iterations > 0 and frames is not None:
        hint = None if cfg.inference_precision == "auto" else cfg.inference_precision
        speed[label] = measure(core, model, [f[None] for f in frames], cfg.speed_iterations,
                               precision=hint)
    return {**result, "inference_precision": used}


def _overlay_samples(model: Any, test: D.PetData, n: int, core: Any) -> List[Dict[str, Any]]:
    from build_models import evaluate as E

    compiled, _ = E.compile_ov(model, "f32", core=core)
    infer = E.ov_infer(compiled)
    picks = np.linspace(0, len(test) - 1, num=min(n, len(test))).round().astype(int)
    samples = []
    for i in dict.fromkeys(picks.tolist()):
        image, truth = test[i]
        batch = image.transpose(2, 0, 1)[None].astype(np.float32)
        samples.append({"image": image, "truth": truth,
                        "pred": E.classes_from_logits(infer(batch))[0]})
    return samples


def build(cfg: BuildConfig) -> Dict[str, Any]:
    import openvino as ov

    from build_models import export as X
    from build_models import quantize as Q
    from build_models.report import plot_precisions, plot_speed, save_overlays
    from build_models.train import model_from_checkpoint

    started = time.monotonic()
    targets = [t for t in mf.TARGETS if t in cfg.targets]
    unknown = sorted(set(cfg.targets) - set(mf.TARGETS))
    if unknown or not targets:
        raise BuildError(f"unknown or no targets {unknown} (valid: {', '.join(mf.TARGETS)})")
    ckpt = Path(cfg.checkpoint)
    model, meta = model_from_checkpoint(ckpt)
    size, mode = int(meta["size"]), meta["label_mode"]
    classes = D.CLASSES[mode]
    name = cfg.name or f"pets-{meta['preset']}"
    version = cfg.version or _now().strftime("%Y.%m.%d-%H%M%S")
    final = Path(cfg.out) / name / version
    if final.exists() and not cfg.force:
        raise BuildError(f"{final} exists (pass --force to replace it, or another --version)")
    stage = final.parent / f".{version}.partial"
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "report").mkdir(parents=True)

    test_scan = D.scan_split(Path(cfg.data), cfg.eval_split, strict=cfg.strict)
    test_pairs = test_scan.pairs[: cfg.eval_limit] if cfg.eval_limit else test_scan.pairs
    test = D.PetData(test_pairs, size, mode)
    core = ov.Core()
    fp32 = X.to_openvino(model, size)
    images = np.stack([test[i][0] for i in range(min(4, len(test)))]).transpose(0, 3, 1, 2)
    images = np.ascontiguousarray(images, dtype=np.float32)
    from build_models.evaluate import compile_ov

    parity = {"FP32": X.parity(model, compile_ov(fp32, "f32", core=core)[0], images)}
    metrics: Dict[str, Dict[str, Any]] = {}
    per_target: Dict[str, Dict[str, Any]] = {}
    quant_info: Dict[str, Any] = {}
    speed: Dict[str, Any] = {}
    nc = len(classes)
    with tempfile.TemporaryDirectory(prefix="segedge-build-") as tmp:
        fp32_xml = X.save_ir(fp32, Path(tmp) / "fp32" / "model.xml")
        metrics["FP32"] = _evaluate(fp32_xml, test, nc, cfg, "FP32", core, speed, images)
        fp16_xml = X.save_ir(fp32, (stage if "gpu" in targets else Path(tmp)) / "gpu" /
                             "model.xml", fp16=True)
        metrics["FP16"] = _evaluate(fp16_xml, test, nc, cfg, "FP16", core, speed, images)
        parity["FP16"] = X.parity(model, compile_ov(fp16_xml, "f32", core=core)[0], images)
        best = fp32_xml
        if {"cpu", "npu"} & set(targets):
            calib_scan = D.scan_split(Path(cfg.data), "train", strict=cfg.strict)
            calib = D.PetData(calib_scan.pairs[: cfg.calib_size], size, mode)
            qcfg = Q.QuantConfig(cfg.calib_size, cfg.tolerance, cfg.accuracy_control)
            int8, quant_info = Q.quantize(core.read_model(fp32_xml), calib, qcfg)
            metrics["INT8"] = _evaluate(int8, test, nc, cfg, "INT8", core, speed, images)
            drop = metrics["FP32"]["dice"] - metrics["INT8"]["dice"]
            quant_info["ptq_drop"] = drop
            if drop > cfg.tolerance and cfg.accuracy_control:
                int8, info = Q.quantize_accuracy_control(
                    core.read_model(fp32_xml), calib, test,
                    lambda compiled, items: Q.dice_of_items(compiled, items, nc), qcfg)
                quant_info.update(info)
                metrics["INT8"] = _evaluate(int8, test, nc, cfg, "INT8", core, speed, images)
                drop = metrics["FP32"]["dice"] - metrics["INT8"]["dice"]
            quant_info["drop"] = drop
            if drop > cfg.tolerance:
                (stage / "report" / "report.json").write_text(json.dumps(
                    {"status": "failed", "metrics": metrics, "quantization": quant_info},
                    indent=2) + "\n")
                raise BuildError(
                    f"INT8 accuracy gate failed: Dice {metrics['INT8']['dice']:.4f} is "
                    f"{drop:.4f} below FP32 {metrics['FP32']['dice']:.4f} (tolerance "
                    f"{cfg.tolerance}; method {quant_info['method']}); see {stage}/report")
            for t in ("cpu", "npu"):
                if t in targets:
                    X.save_ir(int8, stage / t / "model.xml")
                    per_target[t] = metrics["INT8"]
            best = int8
        if "gpu" in targets:
            per_target["gpu"] = metrics["FP16"]
        if "myriad" in targets:
            onnx_path = X.export_onnx(model, size, stage / "myriad" / "model.onnx")
            info = X.onnx_info(onnx_path)
            if info["opset"] > X.MYRIAD_OPSET or not info["static"]:
                raise BuildError(f"{onnx_path}: opset {info['opset']}, static {info['static']} "
                                 f"(MYRIAD needs opset <= {X.MYRIAD_OPSET} and a static shape)")
            per_target["myriad"] = _evaluate(onnx_path, test, nc, cfg, "ONNX", core)
            quant_info["onnx"] = info
        samples = _overlay_samples(best, test, cfg.overlays, core)

    plot_precisions(metrics, stage / "report" / "accuracy.png",
                    f"{name} {version}: {cfg.eval_split} split, {len(test)} images")
    save_overlays(samples, stage / "report" / "overlays.png",
                  f"{'INT8' if 'INT8' in metrics else 'FP32'} predictions ({cfg.eval_split})")
    if speed:
        plot_speed(speed, stage / "report" / "speed.png", f"{name} {version}: CPU, batch 1")
    for src, dest in (("curves.png", "training_curves.png"), ("candidates.png", None),
                      ("candidates.json", None)):  # written by train / candidates chart
        if (ckpt.parent / src).is_file():
            shutil.copyfile(ckpt.parent / src, stage / "report" / (dest or src))
    evaluation = {"split": cfg.eval_split, "images": len(test), "image_size": [size, size],
                  "metric": "Dice micro-averaged over all classes (torchmetrics "
                            "Dice(num_classes=2)); fg_iou = IoU of the pet class",
                  "metrics": {k: {m: v[m] for m in ("dice", "fg_iou", "fg_dice",
                                                    "inference_precision")}
                              for k, v in metrics.items()}}
    report = {"step": "export", "status": "ok", "name": name, "version": version,
              "created": _now().isoformat(), "checkpoint": str(ckpt), "targets": targets,
              "evaluation": evaluation, "per_target": per_target, "parity": parity,
              "quantization": quant_info, "speed": speed, "config": asdict(cfg),
              "data_summary": {cfg.eval_split: test_scan.summary()},
              "train_meta": {k: meta.get(k) for k in ("preset", "data_hash", "code_version",
                                                       "train_images", "val_images", "val")}}
    (stage / "report" / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    manifest = make_manifest(stage, name, version, meta, ckpt, targets, per_target, evaluation)
    mf.write_manifest(stage, manifest)
    from build_models.verify import verify

    problems = verify(stage)["problems"]
    if problems:
        raise BuildError("built bundle does not verify: " + "; ".join(problems))
    shutil.rmtree(final, ignore_errors=True)
    stage.rename(final)
    report.update(bundle=str(final), seconds=round(time.monotonic() - started, 1))
    return report


def make_manifest(bundle: Path, name: str, version: str, meta: Dict[str, Any], ckpt: Path,
                  targets: Sequence[str], per_target: Dict[str, Dict[str, Any]],
                  evaluation: Dict[str, Any]) -> mf.Manifest:
    size, mode = int(meta["size"]), meta["label_mode"]
    model_cfg = meta["model"]
    channels = 1 if mode == "binary" else len(D.CLASSES[mode])
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
                           "data_hash": meta.get("data_hash"),
                           "code_version": meta.get("code_version")},
        model={"architecture": model_cfg["arch"], "encoder": model_cfg["encoder"],
               "preset": meta["preset"], "label_mode": mode,
               "encoder_weights": model_cfg.get("encoder_weights"),
               "decoder_channels": model_cfg.get("decoder_channels"),
               "normalization_inside": {"mean": model_cfg.get("mean"),
                                        "std": model_cfg.get("std"), "scale": 255.0},
               "postprocess": "logit > 0 is class 1" if channels == 1 else "argmax over C"},
        input=mf.TensorSpec(name="image", shape=[1, 3, size, size], element_type="f32",
                            layout="NCHW", color_order="RGB", value_range=[0.0, 255.0],
                            normalization="inside_model"),
        output=mf.TensorSpec(name="logits", shape=[1, channels, size, size], element_type="f32",
                             layout="NCHW", color_order="", value_range=[], kind="logits"),
        classes=list(D.CLASSES[mode]), targets=entries, evaluation=evaluation, files=files)


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
    p.add_argument("--no-progress", dest="progress", action="store_false")


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    values = vars(args).copy()
    values["targets"] = tuple(t.strip() for t in values["targets"].split(",") if t.strip())
    known = set(BuildConfig.__dataclass_fields__)
    return BuildConfig(**{k: v for k, v in values.items() if k in known})


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(prog="segedge-build export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return build(config_from_args(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
