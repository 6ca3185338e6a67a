"""A small but real model bundle, built with OpenVINO's graph API (no torch).

The model is a fixed 3x3 convolution that calls "pet" every pixel whose red
channel exceeds its blue channel, so tests can predict the mask from the frame.
The IR is compiled and run by the real runtime in the agent tests. ``scale``
multiplies its logits: 1.0 (the default) is sure of every pixel of the camera
stand-in's frames; 1e-4 makes the same decisions with top-class probabilities
near 0.5 (a valid, verified bundle that is poor in the field: the canary tests).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Iterable

import numpy as np

from edge_agent.bundle import manifest as mf


def _weights(scale: float = 1.0):
    weights = np.zeros((2, 3, 3, 3), dtype=np.float32)
    # channel 0 (background) = blue - red, channel 1 (pet) = red - blue; input is RGB
    weights[0, 2, 1, 1], weights[0, 0, 1, 1] = 1.0, -1.0
    weights[1, 0, 1, 1], weights[1, 2, 1, 1] = 1.0, -1.0
    bias = np.array([0.5, -0.5], np.float32)
    return (weights * np.float32(scale)).astype(np.float32), (bias * np.float32(scale)).astype(
        np.float32)


def build_model(height: int = 64, width: int = 64, scale: float = 1.0):
    import openvino as ov
    from openvino import opset13 as ops

    image = ops.parameter([1, 3, height, width], ov.Type.f32, name="image")
    weights, bias = _weights(scale)
    conv = ops.convolution(image, ops.constant(weights), [1, 1], [1, 1], [1, 1], [1, 1])
    logits = ops.add(conv, ops.constant(bias.reshape(1, 2, 1, 1)))
    logits.output(0).get_tensor().set_names({"logits"})
    return ov.Model([logits.output(0)], [image], "tiny_red_vs_blue")


def make_tiny_bundle(root: Path, name: str = "tiny", version: str = "0.0.1",
                     targets: Iterable[str] = ("cpu", "gpu", "npu"),
                     height: int = 64, width: int = 64, scale: float = 1.0) -> Path:
    """Write ``root/name/version`` with the given IR targets; return that directory."""
    import openvino as ov

    bundle = Path(root) / name / version
    model = build_model(height, width, scale)
    entries = {}
    precision = {"cpu": "INT8", "gpu": "FP16", "npu": "INT8"}
    for target in targets:
        out = bundle / target
        out.mkdir(parents=True, exist_ok=True)
        ov.save_model(model, str(out / "model.xml"), compress_to_fp16=(target == "gpu"))
        files = [mf.file_entry(bundle, out / "model.xml"), mf.file_entry(bundle, out / "model.bin")]
        entries[target] = mf.TargetEntry(
            name=target, device=mf.TARGET_DEVICES[target], precision=precision[target],
            format="openvino_ir", model=f"{target}/model.xml", files=files,
            min_runtime="2023.0", static_shape=True,
            accuracy={"dice": 1.0, "fg_iou": 1.0, "inference_precision": "f32"})
    all_files = sorted((f for e in entries.values() for f in e.files), key=lambda f: f.path)
    manifest = mf.Manifest(
        name=name, version=version,
        created=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        tools={"openvino": ov.get_version(), "torch": "none", "nncf": "none"},
        source_checkpoint={"file": "none", "sha256": "0" * 64},
        model={"architecture": "tiny-conv", "encoder": "none", "preset": "test",
               "label_mode": "binary"},
        input=mf.TensorSpec(name="image", shape=[1, 3, height, width], element_type="f32"),
        output=mf.TensorSpec(name="logits", shape=[1, 2, height, width], element_type="f32",
                             kind="logits"),
        classes=["background", "pet"],
        targets=entries,
        evaluation={"split": "synthetic", "images": 0, "metrics": {}},
        files=all_files,
    )
    mf.write_manifest(bundle, manifest)
    return bundle


def tiny_onnx_bytes(height: int = 64, width: int = 64, scale: float = 1.0) -> bytes:
    """The same red-vs-blue model as ONNX (opset 13, IR version 7: OpenVINO 2022.3 reads it)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights, bias = _weights(scale)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w", "b"], ["logits"], pads=[1, 1, 1, 1],
                          kernel_shape=[3, 3])],
        "tiny_red_vs_blue",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, height, width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2, height, width])],
        initializer=[numpy_helper.from_array(weights, "w"),
                     numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="segedge-tests")
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model.SerializeToString()


def add_myriad_target(bundle: Path, scale: float = 1.0) -> Path:
    """Add a ``myriad/model.onnx`` target (FP16 on the NCS2) to an existing tiny bundle."""
    import dataclasses

    bundle = Path(bundle)
    manifest = mf.load_manifest(bundle)
    height, width = manifest.input.shape[2], manifest.input.shape[3]
    out = bundle / "myriad"
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(tiny_onnx_bytes(height, width, scale))
    files = [mf.file_entry(bundle, out / "model.onnx")]
    targets = dict(manifest.targets)
    targets["myriad"] = mf.TargetEntry(
        name="myriad", device="MYRIAD", precision="FP16", format="onnx",
        model="myriad/model.onnx", files=files, min_runtime="2022.3", static_shape=True,
        accuracy={"dice": 1.0, "fg_iou": 1.0, "inference_precision": "f16"})
    all_files = sorted((f for e in targets.values() for f in e.files), key=lambda f: f.path)
    mf.write_manifest(bundle, dataclasses.replace(manifest, targets=targets, files=all_files))
    return bundle


def started_engine(bundle: Path, got: dict, decide: bool, hint: str = "throughput"):
    """A loaded, warmed-up CPU Engine on ``bundle`` whose results land in ``got[userdata]``."""
    from edge_agent.config import ModelConfig
    from edge_agent.inference.engine import Engine

    engine = Engine(ModelConfig(bundle=str(bundle), devices=["CPU"], performance_hint=hint),
                    mf.OpenedBundle.open(str(bundle), "cpu"))
    engine.load()
    engine.warmup()
    engine.start(lambda i, out, _fig: got.__setitem__(i, out), decide=decide)
    return engine
