"""The bundle's model on the first device that compiles it, run through AsyncInferQueue.

Devices are tried in the configured order and every failure is kept (no silent
AUTO fallback). Warm-up is one synchronous inference. Results of ``submit`` come
back through the one callback given to ``start(on_result)``, from OpenVINO's
threads; the pipeline restores frame order.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from . import ovcompat
from .config import ModelConfig
from .manifest import BundleError, Manifest, read_model
from .messages import ModelInfo
from .opened import OpenedBundle

log = logging.getLogger("segedge.inference")


class InferenceError(Exception):
    """No configured device could compile the model; the message lists each reason."""


def input_size(manifest: Manifest) -> Tuple[int, int]:
    shape = manifest.input.shape
    layout = manifest.input.layout.upper()
    if len(shape) != 4:
        raise InferenceError(f"manifest input shape {shape} is not 4-D")
    if layout == "NHWC":
        return int(shape[1]), int(shape[2])
    return int(shape[2]), int(shape[3])


ResultCallback = Callable[[Any, Optional[np.ndarray]], None]


class Engine:
    """Compile once (``load``), ``warmup``, ``start(on_result)``, then ``submit`` frames."""

    def __init__(self, cfg: ModelConfig, opened: OpenedBundle) -> None:
        self.cfg = cfg
        manifest = opened.manifest
        self.manifest: Manifest = manifest
        self.target = opened.target
        self.model_path = opened.model_path
        self.bundle_dir = Path(cfg.bundle)
        self.size_hw = input_size(manifest)
        self.info = ModelInfo(manifest.name, manifest.version, opened.target.precision)
        shape = manifest.output.shape
        self.output_channels = int(shape[1]) if len(shape) > 1 else 1
        self.output_kind: str = manifest.output.kind or "logits"
        self.classes: List[str] = list(manifest.classes)
        self.device = ""
        self.failures: Dict[str, str] = {}
        self.inference_precision = ""
        self.num_requests = 0
        self._compiled: Any = None
        self._queue: Any = None
        self._out = 0
        self._on_result: Optional[ResultCallback] = None

    def _properties(self, device: str) -> Dict[str, str]:
        props = {"PERFORMANCE_HINT": "THROUGHPUT"}
        if self.cfg.num_requests:
            props["PERFORMANCE_HINT_NUM_REQUESTS"] = str(self.cfg.num_requests)
        if self.cfg.inference_precision:
            props["INFERENCE_PRECISION_HINT"] = self.cfg.inference_precision
        return props

    def _compile(self, core: Any, model: Any, device: str) -> Any:
        props = self._properties(device)
        try:
            return ovcompat.compile_model(core, model, device, props)
        except Exception as first:  # noqa: BLE001 - an old plugin may reject a hint
            if not props:
                raise
            try:
                compiled = ovcompat.compile_model(core, model, device, {})
            except Exception:  # noqa: BLE001
                raise first from None
            log.warning("device %s rejected %s (%s); compiled with its defaults", device,
                        props, " ".join(str(first).split())[:200])
            return compiled

    def load(self) -> None:
        core = ovcompat.new_core(self.cfg.cache_dir)
        spec = self.manifest.input
        scale = 255.0 if spec.value_range and float(spec.value_range[-1]) <= 1.0 else 1.0
        blob = read_model(self.bundle_dir, self.target)  # compile the bytes that were hashed
        try:
            model = ovcompat.read_model_bytes(core, blob.model, blob.weights, blob.path.suffix,
                                              spec.name, list(spec.shape))
        except Exception as exc:  # noqa: BLE001 - a model OpenVINO cannot read: exit 78
            raise BundleError(f"bundle refused: {blob.path}: OpenVINO cannot read the model: "
                              f"{' '.join(str(exc).split())[:200]}") from None
        model = ovcompat.add_preprocessing(
            model, spec.name, spec.color_order,
            mean=spec.mean if spec.normalization == "caller" else None,
            std=spec.std if spec.normalization == "caller" else None, scale=scale)
        present = ovcompat.available_devices(core)
        for device in self.cfg.devices:
            t0 = time.monotonic()
            try:
                compiled = self._compile(core, model, device)
            except Exception as exc:  # noqa: BLE001 - every plugin error is a reason to report
                reason = " ".join(str(exc).split())[:300] or type(exc).__name__
                if device.split(".")[0] not in present:
                    reason = f"not available (present: {', '.join(present) or 'none'}): {reason}"
                self.failures[device] = reason
                log.warning("device %s failed: %s", device, reason)
                continue
            self.device = device
            self.num_requests = self.cfg.num_requests or ovcompat.optimal_requests(compiled)
            self.inference_precision = ovcompat.precision_name(
                ovcompat.property_or(compiled, "INFERENCE_PRECISION_HINT", "default"))
            self._out = ovcompat.output_index(compiled, self.manifest.output.name)
            self._compiled = compiled
            self._queue = ovcompat.new_queue(compiled, self.num_requests)
            log.info("model %s %s (%s) on %s in %.1fs: %d requests, %s", self.info.name,
                     self.info.version, self.info.precision, device, time.monotonic() - t0,
                     self.num_requests, self.inference_precision)
            return
        raise InferenceError("no device could run the model: " + "; ".join(
            f"{d}: {r}" for d, r in self.failures.items()))

    def start(self, on_result: ResultCallback) -> None:
        """Set the one result callback (once, before the first ``submit``)."""
        if self._on_result is not None:
            raise RuntimeError("engine already started")
        self._on_result = on_result
        self._queue.set_callback(self._done)

    def _done(self, request: Any, userdata: Any) -> None:
        try:
            output = np.array(ovcompat.output_array(request, self._out), copy=True)
        except Exception:  # noqa: BLE001 - must not kill OpenVINO's callback thread
            log.exception("reading inference output failed")
            output = None
        self._on_result(userdata, output)

    def submit(self, tensor: np.ndarray, userdata: Any) -> None:
        """Start one inference; blocks while all requests are busy."""
        self._queue.start_async({0: tensor}, userdata)

    def drain(self) -> None:
        if self._queue is not None:
            self._queue.wait_all()

    def warmup(self) -> np.ndarray:
        """One synchronous inference on a black frame (first-run costs paid before frames)."""
        h, w = self.size_hw
        request = self._compiled.create_infer_request()
        request.infer({0: np.zeros((1, h, w, 3), np.uint8)})
        return np.array(ovcompat.output_array(request, self._out), copy=True)
