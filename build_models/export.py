"""torch -> OpenVINO IR (static shape, named tensors) and ONNX for MYRIAD, with parity checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import numpy as np

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
MYRIAD_OPSET = 13  # the newest opset OpenVINO 2022.3 (last release with MYRIAD) reads


def to_openvino(model: Any, size: int) -> Any:
    """Convert a SegModel to an ov.Model: input ``image`` f32 [1,3,size,size], output ``logits``."""
    import openvino as ov
    import torch

    model.eval()
    example = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        ov_model = ov.convert_model(model, example_input=example,
                                    input=[("image", [1, 3, size, size], ov.Type.f32)])
    ov_model.inputs[0].get_tensor().set_names({INPUT_NAME})
    ov_model.outputs[0].get_tensor().set_names({OUTPUT_NAME})
    ov_model.set_friendly_name("segedge")
    return ov_model


def save_ir(ov_model: Any, xml: Path, fp16: bool = False) -> Path:
    import openvino as ov

    Path(xml).parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, str(xml), compress_to_fp16=fp16)
    return Path(xml)


def export_onnx(model: Any, size: int, path: Path, opset: int = MYRIAD_OPSET) -> Path:
    """Static-shape ONNX at ``opset`` (TorchScript exporter; the dynamo one needs onnxscript)."""
    import warnings

    import torch

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # legacy exporter, on purpose
        torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(path),
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          opset_version=opset, dynamic_axes=None, dynamo=False)
    return Path(path)


def onnx_info(path: Path) -> Dict[str, Any]:
    """Opset and input/output shapes of an ONNX file (None dims mean dynamic)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))

    def dims(value) -> list:
        return [d.dim_value if d.HasField("dim_value") else None
                for d in value.type.tensor_type.shape.dim]

    inputs = {v.name: dims(v) for v in proto.graph.input}
    outputs = {v.name: dims(v) for v in proto.graph.output}
    static = all(None not in d and 0 not in d for d in [*inputs.values(), *outputs.values()])
    return {"opset": opset, "inputs": inputs, "outputs": outputs, "static": static}


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of pixels where two class maps agree."""
    return float((np.asarray(a) == np.asarray(b)).mean())


def parity(model: Any, compiled: Any, images: np.ndarray) -> Dict[str, float]:
    """Argmax agreement and max |logit diff| between torch and a compiled OpenVINO model."""
    import torch

    from build_models.evaluate import classes_from_logits, ov_infer

    with torch.inference_mode():
        ref = model.eval()(torch.from_numpy(images)).numpy()
    got = ov_infer(compiled)(images)
    return {"agreement": agreement(classes_from_logits(ref), classes_from_logits(got)),
            "max_abs_diff": float(np.abs(ref - got).max())}
