"""Every OpenVINO API difference between 2022.3 (the MYRIAD lane) and current releases.

2022.3 has ``openvino.runtime`` (Core, AsyncInferQueue, Layout, Type) and
``openvino.preprocess``; 2023.1+ exposes the same classes at ``openvino`` top level and
2026 drops ``openvino.runtime``. Nothing else in the agent imports openvino directly.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

try:  # 2023.1 and newer
    import openvino as _ov

    Core = _ov.Core
    Model = _ov.Model
    AsyncInferQueue = _ov.AsyncInferQueue
    Layout = _ov.Layout
    Type = _ov.Type
    get_version = _ov.get_version
except (ImportError, AttributeError):  # pragma: no cover - 2022.3
    from openvino.runtime import AsyncInferQueue, Core, Layout, Model, Type, get_version  # noqa: F401

try:  # 2023.1 and newer
    from openvino import opset8 as _ops
except ImportError:  # pragma: no cover - 2022.3
    from openvino.runtime import opset8 as _ops

from openvino.preprocess import ColorFormat, PrePostProcessor, ResizeAlgorithm

from edge_agent.quality.figures import logit_bound


def runtime_version() -> str:
    return str(get_version())


def new_core(cache_dir: str = "") -> Any:
    core = Core()
    if cache_dir:
        core.set_property({"CACHE_DIR": cache_dir})
    return core


def available_devices(core: Any) -> List[str]:
    try:
        return list(core.available_devices)
    except Exception:  # noqa: BLE001 - a broken plugin must not stop the agent
        return []


def read_model(core: Any, path: str, input_name: str, shape: List[int]) -> Any:
    """Read an IR or ONNX file, fixing a dynamic input to the manifest's shape."""
    model = core.read_model(str(path))
    if model.is_dynamic():
        model.reshape({input_name: shape})
    return model


def _searchable_cwd() -> None:
    """Reading a model from memory, OpenVINO (2026.x) looks up a relative path and, where
    the working directory cannot be searched (a service user started from root's home:
    ``runuser -u segedge`` in a play), aborts the whole process with an uncaught C++
    ``filesystem_error``: no exception, no message. Such a directory serves no relative
    path anyway, so move to ``/``, as systemd starts services."""
    if not os.access(".", os.X_OK):
        os.chdir("/")


def read_model_bytes(core: Any, model: bytes, weights: Optional[bytes], suffix: str,
                     input_name: str, shape: List[int]) -> Any:
    """Read a model from the bytes that were hashed (IR .xml + .bin, or ONNX).

    ``read_model(bytes, bytes)`` exists in 2022.3 and current releases; where a
    runtime cannot read a format from memory, the same bytes go through a private
    temporary copy, so what is compiled is still exactly what was checked.
    """
    _searchable_cwd()
    try:
        read = core.read_model(model, weights or b"")
    except Exception:  # noqa: BLE001 - retried below; a bad model fails there too
        with tempfile.TemporaryDirectory(prefix="segedge-model-") as tmp:
            path = Path(tmp) / f"model{suffix}"
            path.write_bytes(model)
            if weights is not None:
                path.with_suffix(".bin").write_bytes(weights)
            read = core.read_model(str(path))
    if read.is_dynamic():
        read.reshape({input_name: shape})
    return read


RESIZE = "RESIZE_LINEAR"  # the in-graph resize; BILINEAR_PILLOW: ~5x the CPU per frame
ANY_SIZE = (0, 0)  # add_preprocessing's frame_hw for a dynamic input: frames of any size


def add_preprocessing(model: Any, input_name: str, color_order: str,
                      mean: Optional[List[float]] = None, std: Optional[List[float]] = None,
                      scale: float = 1.0, frame_hw: Optional[Tuple[int, int]] = None,
                      shrink: int = 1) -> Any:
    """u8 BGR NHWC frames in; f32, colour order, layout (and caller-side norm) in the graph.

    ``frame_hw``: frames of that size (``ANY_SIZE``: any size, a dynamic input) come in and
    are resized in the graph by preprocess.model_resize's rule: ``shrink`` > 1 box-averages
    by that integer factor first (AvgPool on f32), then bilinear.
    """
    ppp = PrePostProcessor(model)
    inp = ppp.input(input_name)
    tensor = inp.tensor().set_element_type(Type.u8).set_layout(Layout("NHWC")) \
        .set_color_format(ColorFormat.BGR)
    pre = inp.preprocess()
    resize = getattr(ResizeAlgorithm, RESIZE, ResizeAlgorithm.RESIZE_LINEAR)
    if frame_hw is not None:
        if tuple(frame_hw) == ANY_SIZE:
            tensor.set_spatial_dynamic_shape()
        else:
            tensor.set_spatial_static_shape(int(frame_hw[0]), int(frame_hw[1]))
        if shrink > 1:  # box average needs floats: convert first, resize on f32
            pre.convert_element_type(Type.f32)
            pre.custom(lambda node: _box_average(node, shrink))
        else:
            pre.resize(resize)
    if frame_hw is not None and shrink > 1:
        pre.resize(resize)
    else:
        pre.convert_element_type(Type.f32)
    if color_order.upper() == "RGB":
        pre.convert_color(ColorFormat.RGB)
    if scale != 1.0:
        pre.scale(scale)
    if mean:
        pre.mean([float(x) for x in mean])
    if std:
        pre.scale([float(x) for x in std])
    inp.model().set_layout(Layout("NCHW"))
    return ppp.build()


def _box_average(node: Any, k: int) -> Any:
    """NHWC f32 -> NHWC averaged over k x k blocks (the remainder cut: floor rounding)."""
    nchw = _ops.transpose(node, _ops.constant([0, 3, 1, 2]))
    pooled = _ops.avg_pool(nchw, [k, k], [0, 0], [0, 0], [k, k], True, "floor")
    return _ops.transpose(pooled, _ops.constant([0, 2, 3, 1])).output(0)


def append_class_decision(model: Any, output_index: int, kind: str) -> Any:
    """The model with that output turned into the u8 class map [1, H, W] (in place), by
    postprocess.to_mask's rule.

    One channel: logit > 0 (probability > 0.5); two: channel 1 > channel 0; more: argmax.
    """
    result = model.get_results()[output_index]
    out = result.input_value(0)  # what the Result node shows (model.output is the Result's)
    channels = int(out.get_partial_shape()[1].get_length())
    if channels == 1:
        zero = 0.5 if kind == "probabilities" else 0.0
        cls = _ops.greater(_ops.squeeze(out, _ops.constant([1])),
                           _ops.constant(zero, out.get_element_type()))
    elif channels == 2:
        both = _ops.split(out, _ops.constant(1), 2)
        cls = _ops.greater(_ops.squeeze(both.output(1), _ops.constant([1])),
                           _ops.squeeze(both.output(0), _ops.constant([1])))
    else:
        top = _ops.topk(out, _ops.constant(1), 1, "max", "none", "i32")
        cls = _ops.squeeze(top.output(1), _ops.constant([1]))
    decided = _ops.convert(cls, "u8")
    names = out.get_names()
    out.get_tensor().set_names(set())
    decided.output(0).get_tensor().set_names(set(names) or {"class_map"})
    result.input(0).replace_source_output(decided.output(0))
    model.validate_nodes_and_infer_types()
    return model


QUALITY_OUTPUT = "frame_quality"  # f32 [2]: uncertain, margin (edge_agent.quality.figures)


def append_frame_quality(model: Any, output_index: int, kind: str, threshold: float) -> Any:
    """The model with a second output ``frame_quality``, f32 ``[2]`` = [uncertain, margin]
    of that output's scores, by ``edge_agent.quality.figures.frame_figures``'s rule (in
    place). Call before ``append_class_decision``: both read the same scores.

    Binary logits (one channel, or two as their difference): ``|l| < ln(t/(1-t))`` and
    ``tanh(|l|/2)``; one probability channel: ``|2p-1|`` against ``2t-1``; more channels
    (or probabilities): the two largest of the softmax (or of the probabilities).
    """
    result = model.get_results()[output_index]
    out = result.input_value(0)
    if out.get_element_type() != Type.f32:
        out = _ops.convert(out, "f32").output(0)
    channels = int(out.get_partial_shape()[1].get_length())
    rank = out.get_partial_shape().rank.get_length()
    every = _ops.constant(list(range(rank)))

    def f32(value: float) -> Any:
        return _ops.constant(float(value), Type.f32)

    if kind != "probabilities" and channels <= 2:
        if channels == 2:
            both = _ops.split(out, _ops.constant(1), 2)
            out = _ops.subtract(both.output(1), both.output(0)).output(0)
        a = _ops.abs(out)
        below = _ops.less(a, f32(logit_bound(threshold)))
        margin_map = _ops.tanh(_ops.multiply(a, f32(0.5)))
    elif channels == 1:
        p = _ops.clamp(out, 0.0, 1.0)
        margin_map = _ops.abs(_ops.subtract(_ops.multiply(p, f32(2.0)), f32(1.0)))
        below = _ops.less(margin_map, f32(2.0 * threshold - 1.0))
    else:
        p = out if kind == "probabilities" else _ops.softmax(out, 1)
        top = _ops.topk(p, _ops.constant(2), 1, "max", "value", "i32")
        both = _ops.split(top.output(0), _ops.constant(1), 2)
        below = _ops.less(both.output(0), f32(threshold))
        margin_map = _ops.subtract(both.output(0), both.output(1))
    uncertain = _ops.reduce_mean(_ops.convert(below, "f32"), every, False)
    margin = _ops.reduce_mean(margin_map, every, False)
    if kind == "probabilities" or channels > 2:  # a NaN or inf score: a NaN margin (None)
        guard = _ops.multiply(_ops.reduce_sum(out, every, False), f32(0.0))
        margin = _ops.add(margin, guard)
    figures = _ops.concat([_ops.unsqueeze(uncertain, _ops.constant([0])),
                           _ops.unsqueeze(margin, _ops.constant([0]))], 0)
    figures.output(0).get_tensor().set_names({QUALITY_OUTPUT})
    result = _ops.result(figures)
    if hasattr(model, "add_results"):
        model.add_results([result])
    else:  # 2022.3 has no add_results: the same graph with one more result
        model = Model(list(model.get_results()) + [result], list(model.get_parameters()),
                      model.get_friendly_name())
    model.validate_nodes_and_infer_types()
    return model


def compile_model(core: Any, model: Any, device: str, config: Dict[str, str]) -> Any:
    return core.compile_model(model, device, config)


def property_or(compiled: Any, name: str, default: Any) -> Any:
    try:
        return compiled.get_property(name)
    except Exception:  # noqa: BLE001 - not every device reports every property
        return default


def optimal_requests(compiled: Any) -> int:
    return max(1, int(property_or(compiled, "OPTIMAL_NUMBER_OF_INFER_REQUESTS", 1)))


def precision_name(value: Any) -> str:
    """Type or string ('<Type: 'float32'>', 'f32', 'bf16') -> 'f32'/'bf16'/'f16'/..."""
    text = str(value).lower()
    for key, name in (("bfloat16", "bf16"), ("bf16", "bf16"), ("float16", "f16"),
                      ("f16", "f16"), ("float32", "f32"), ("f32", "f32")):
        if key in text:
            return name
    return text or "unknown"


def new_queue(compiled: Any, jobs: int) -> Any:
    return AsyncInferQueue(compiled, jobs)


def output_index(compiled: Any, name: str) -> int:
    for i, out in enumerate(compiled.outputs):
        if name in out.get_names():
            return i
    if len(compiled.outputs) == 1:
        return 0
    raise KeyError(f"model has no output named {name!r}")


def output_array(request: Any, index: int) -> Any:
    return request.get_output_tensor(index).data
