"""The bundle's model on the first device that compiles it, run through AsyncInferQueue.

Devices are tried in the configured order and every failure is kept (no silent
AUTO fallback). Warm-up is one synchronous inference. Results of ``submit`` come
back through the one callback given to ``start(on_result)``, from OpenVINO's
threads; the pipeline restores frame order.

Per-frame work lives in the graph where it pays (measured in docs/benchmarks-agent.md):
with ``start(..., decide=True)`` the graph takes the class decision and returns a u8 class
map (``result_kind == "classes"``), so the callback copies a quarter of the bytes and
Python does no per-pixel work. With ``quality`` (a threshold) the graph also returns the
frame's confidence figures (``ovcompat.append_frame_quality``: two floats), passed to the
callback as ``FrameFigures`` (None without them, or when they are not finite). With
``RESIZE_IN_GRAPH`` (off by measurement, see there) frames go in at their own size and the
graph resizes them by preprocess.model_resize's rule, the one the build trains on (off:
the same rule runs in OpenCV before ``submit``): one compiled variant per
frame size for the first ``STATIC_SIZES`` sizes (a camera has one; a static input costs
about 1 ms less CPU per frame than a dynamic one), then, for a source whose frames keep
changing size, variants with a dynamic input (one per box-average factor; on a device
without dynamic shapes, per size again), at most ``MAX_SIZES``, least recently used
dropped.

Under ``performance_hint = "auto"`` (CPU) the model is compiled twice, under the LATENCY and
the THROUGHPUT hint, and ``hint.HintPolicy`` picks one per frame by the load: the soonest mask
while frames leave the cores idle, the most masks per second when they do not.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Dict, Hashable, List, Optional, Tuple

import numpy as np

from edge_agent.bundle.manifest import BundleError, Manifest, OpenedBundle, read_model
from edge_agent.config import ModelConfig
from edge_agent.inference import ovcompat
from edge_agent.inference.hint import LATENCY, THROUGHPUT, HintPolicy
from edge_agent.inference.postprocess import num_classes
from edge_agent.inference.preprocess import shrink_factor, to_model_input
from edge_agent.protocol.messages import ModelInfo
from edge_agent.quality.drift import Reference
from edge_agent.quality.figures import FrameFigures, checked

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


# (userdata, output or None, the graph's figures or None)
ResultCallback = Callable[[Any, Optional[np.ndarray], Optional[FrameFigures]], None]
# The resize by the one rule (preprocess.model_resize, what the build trains and evaluates
# on) in the graph (True) or in OpenCV before it (False): the same pictures within one grey
# level, so the same accuracy. Measured on bundle 3.0.0, 640x480 frames, one bench_agent run
# (docs/benchmarks-agent.md): OpenCV 0.28 ms + inference 10.59 ms CPU per frame, the graph
# (static input per size) 12.17 ms; the agent 0.78 vs 0.73 of its limit. So OpenCV, until
# a device is measured where the graph wins (the code and its tests stay).
RESIZE_IN_GRAPH = False
MAX_SIZES = 4  # compiled variants kept; more are compiled again when needed
# frame sizes that get a static variant; more distinct sizes go to dynamic-input variants
# (measured on the demo model, 640x480 frames: static 11.2, dynamic 12.1 ms CPU/inference)
STATIC_SIZES = 3


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
        # the bundle's quality reference (None: the bundle has none: ``no_reference``)
        self.reference = Reference.from_manifest(getattr(manifest, "reference", None))
        # the bundle's class names, padded to the output's channel count (computed once:
        # every mask message and overlay names them)
        named = list(manifest.classes)
        self.classes: List[str] = named + [
            f"class{i}" for i in range(len(named), num_classes(named, self.output_channels))]
        self.device = ""
        self.failures: Dict[str, str] = {}
        self.inference_precision = ""
        self.num_requests = 0
        # the hints compiled (auto: both) and the policy choosing between them
        self.hints: Tuple[str, ...] = ()
        self.policy: Optional[HintPolicy] = None
        self._requests: Dict[str, int] = {}
        self._policy_lock = threading.Lock()
        self._compiled: Any = None
        self._queue: Any = None
        self._out = 0
        self._on_result: Optional[ResultCallback] = None
        self.resize_in_graph = RESIZE_IN_GRAPH
        self.decide = False
        self.quality: Optional[float] = None  # figures at this threshold (None: none)
        self._core: Any = None
        self._uncached: Any = None  # a Core without the cache (see _compile)
        self._raw: Any = None  # the model as read, before any graph step of ours
        self._variants: OrderedDict[Tuple[Any, ...], Any] = OrderedDict()
        self._dynamic = True  # a device that can compile a dynamic input (until it says no)
        self._sizes: Dict[Tuple[int, int], None] = {}  # the static sizes, first come
        self._failed_sizes: Dict[Tuple[int, int], str] = {}

    @property
    def performance_hint(self) -> str:
        """The hint the next frame runs under (auto: the policy's current choice)."""
        return self.policy.mode if self.policy is not None else self.hints[0]

    def _properties(self, device: str, hint: str = THROUGHPUT) -> Dict[str, str]:
        props = {"PERFORMANCE_HINT": hint.upper()}
        if self.cfg.num_requests:
            props["PERFORMANCE_HINT_NUM_REQUESTS"] = str(self.cfg.num_requests)
        if self.cfg.inference_precision:
            props["INFERENCE_PRECISION_HINT"] = self.cfg.inference_precision
        return props

    def _compile(self, core: Any, model: Any, device: str, hint: str = THROUGHPUT) -> Any:
        props = self._properties(device, hint)
        try:
            return ovcompat.compile_model(core, model, device, props)
        except Exception as first:  # noqa: BLE001 - an old plugin may reject a hint
            if self.cfg.cache_dir and core is not self._uncached:
                # a cache entry the runtime cannot import (OpenVINO 2022.3's CPU plugin:
                # "map::at" for a graph with our steps it cached itself): compile afresh
                compiled = self._compile(self._uncached_core(), model, device, hint)
                log.warning("device %s: the model cache %s failed (%s); compiled without it",
                            device, self.cfg.cache_dir, " ".join(str(first).split())[:200])
                return compiled
            if not props:
                raise
            try:
                compiled = ovcompat.compile_model(core, model, device, {})
            except Exception:  # noqa: BLE001
                raise first from None
            log.warning("device %s rejected %s (%s); compiled with its defaults", device,
                        props, " ".join(str(first).split())[:200])
            return compiled

    def _uncached_core(self) -> Any:
        """A Core without ``CACHE_DIR``, made on the first compile the cache fails."""
        if self._uncached is None:
            self._uncached = ovcompat.new_core("")
        return self._uncached

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
        self._core, self._raw, self._scale = core, model, scale
        model = self._with_steps(None, decide=False)
        present = ovcompat.available_devices(core)
        wanted = self.cfg.performance_hint
        for device in self.cfg.devices:
            t0 = time.monotonic()
            # auto: both hints on CPU; elsewhere throughput (a second compile there can take
            # minutes and the LATENCY hint's gain is the CPU's streams/threads trade)
            hints = ((THROUGHPUT, LATENCY) if device.split(".")[0] == "CPU" else (THROUGHPUT,)) \
                if wanted == "auto" else (wanted,)
            try:
                compiled = self._compile(core, model, device, hints[0])
            except Exception as exc:  # noqa: BLE001 - every plugin error is a reason to report
                reason = " ".join(str(exc).split())[:300] or type(exc).__name__
                if device.split(".")[0] not in present:
                    reason = f"not available (present: {', '.join(present) or 'none'}): {reason}"
                self.failures[device] = reason
                log.warning("device %s failed: %s", device, reason)
                continue
            self.device, self.hints = device, hints
            # throughput: one request more than the device's streams, so a stream never waits
            # for Python to hand it the next frame (measured: 0.83 -> 0.91 of the limit)
            self._requests = {hint: self.cfg.num_requests or ovcompat.optimal_requests(compiled)
                              + (hint == THROUGHPUT) for hint in hints}
            self.num_requests = max(self._requests.values())
            self.inference_precision = ovcompat.precision_name(
                ovcompat.property_or(compiled, "INFERENCE_PRECISION_HINT", "default"))
            self._out = ovcompat.output_index(compiled, self.manifest.output.name)
            self._compiled = compiled
            self._queue = ovcompat.new_queue(compiled, self._requests[hints[0]])
            self._variants[("model", False, hints[0])] = (compiled, self._queue, self._out)
            log.info("model %s %s (%s) on %s in %.1fs: %s hint%s, %s requests, %s",
                     self.info.name, self.info.version, self.info.precision, device,
                     time.monotonic() - t0, " and ".join(hints), "s" if len(hints) > 1 else "",
                     "/".join(str(self._requests[h]) for h in hints), self.inference_precision)
            return
        error = InferenceError("no device could run the model: " + "; ".join(
            f"{d}: {r}" for d, r in self.failures.items()))
        # none of the listed devices is on this machine: a configuration error (exit 78)
        error.none_present = not any(d.split(".")[0] in {p.split(".")[0] for p in present}
                                     for d in self.failures)
        error.short = (f"none of {', '.join(self.failures)} is on this machine (present: "
                       f"{', '.join(present) or 'none'})")
        raise error

    def _with_steps(self, frame_hw: Optional[Tuple[int, int]], decide: bool,
                    shrink: int = 1) -> Any:
        """The read model + our graph steps: preprocessing and, with ``decide``, the class
        decision (a fresh copy each time: PPP edits in place). ``frame_hw``: None = frames
        at the model's size; ``ovcompat.ANY_SIZE`` = any size (dynamic input, resized in the
        graph with ``shrink``); else frames of that static size, resized."""
        spec = self.manifest.input
        model = self._raw.clone()
        model = ovcompat.add_preprocessing(
            model, spec.name, spec.color_order,
            mean=spec.mean if spec.normalization == "caller" else None,
            std=spec.std if spec.normalization == "caller" else None, scale=self._scale,
            frame_hw=frame_hw if frame_hw != self.size_hw else None, shrink=shrink)
        if decide:
            index = ovcompat.output_index(model, self.manifest.output.name)
            if self.quality is not None:  # reads the scores: before the decision
                model = ovcompat.append_frame_quality(model, index, self.output_kind,
                                                      self.quality)
            model = ovcompat.append_class_decision(model, index, self.output_kind)
        return model

    @property
    def result_kind(self) -> str:
        """What ``on_result`` receives: "classes" (u8 class map) or the model's own output."""
        return "classes" if self.decide else self.output_kind

    def start(self, on_result: ResultCallback, decide: bool = False,
              quality: Optional[float] = None) -> None:
        """Set the one result callback (once, before the first ``submit``); ``decide``: the
        graph returns the u8 class map (``postprocess.to_mask``'s rule) instead of scores;
        ``quality``: the threshold of the frame's figures, computed in the graph with
        ``decide`` (without: the caller computes them from the scores)."""
        if self._on_result is not None:
            raise RuntimeError("engine already started")
        self._on_result = on_result
        self.decide = decide
        self.quality = quality
        if decide:
            self._variants.clear()  # the warm-up variant returns scores
        else:
            self._queue.set_callback(self._make_done(self._out, None))
        for hint in self.hints:
            self._variant(self.size_hw, hint)  # compiled now, not at the first frame
        if len(self.hints) > 1:
            self.policy = HintPolicy(service_s=self._time_latency())

    def _time_latency(self, runs: int = 5) -> float:
        """Seconds per LATENCY-hint inference (median of a few): the policy's first estimate,
        kept current by the requests themselves."""
        compiled = self._variant(self.size_hw, LATENCY)[0]
        request = compiled.create_infer_request()
        h, w = self.size_hw
        frame = {0: np.zeros((1, h, w, 3), np.uint8)}
        times = []
        for _ in range(runs):
            t0 = time.monotonic()
            request.infer(frame)
            times.append(time.monotonic() - t0)
        return float(np.median(times))

    def _make_done(self, out: int, figures_at: Optional[int]) -> Callable[[Any, Any], None]:
        def done(request: Any, packed: Any) -> None:
            userdata, hint, submitted = packed
            if self.policy is not None:
                with self._policy_lock:
                    now = time.monotonic()
                    self.policy.finished(hint, now - submitted, now)
            figures = None
            try:
                output = np.array(ovcompat.output_array(request, out), copy=True)
                if figures_at is not None:
                    pair = ovcompat.output_array(request, figures_at)
                    figures = checked(float(pair[0]), float(pair[1]))  # NaN: None
            except Exception:  # noqa: BLE001 - must not kill OpenVINO's callback thread
                log.exception("reading inference output failed")
                output = None
            self._on_result(userdata, output, figures)
        return done

    def _compile_steps(self, frame_hw: Optional[Tuple[int, int]], shrink: int,
                       hint: str) -> Any:
        """Compile the model with our steps; without the figures where the device lacks their
        ops (the class map still comes)."""
        try:
            return self._compile(self._core, self._with_steps(frame_hw, self.decide, shrink),
                                 self.device, hint)
        except Exception as exc:  # noqa: BLE001 - a plugin without the figures' ops
            if self.quality is None or not self.decide:
                raise
            log.warning("device %s cannot compute the confidence figures in the graph (%s); "
                        "running without them (no quality figures)", self.device,
                        " ".join(str(exc).split())[:200])
            self.quality = None
            return self._compile(self._core, self._with_steps(frame_hw, True, shrink),
                                 self.device, hint)

    def _key(self, frame_hw: Tuple[int, int]) -> Tuple[Any, ...]:
        """Which compiled variant serves frames of ``frame_hw``: the model's own size; one per
        size for the first ``STATIC_SIZES`` sizes; then one per box-average factor taking any
        size (dynamic input), or, on a device that cannot compile that, one per size."""
        if frame_hw == self.size_hw:
            return ("model", self.decide)
        if frame_hw not in self._sizes and len(self._sizes) < STATIC_SIZES:
            self._sizes[frame_hw] = None
        if frame_hw in self._sizes or not self._dynamic:
            return ("size", frame_hw, self.decide)
        return ("any", shrink_factor(frame_hw, self.size_hw), self.decide)

    def _variant(self, frame_hw: Tuple[int, int], hint: str, fallback: bool = True) -> Any:
        """The compiled model and queue for frames of ``frame_hw`` under ``hint`` (compiled on
        first use; ``fallback``: per frame size when the device cannot take any size)."""
        key = self._key(frame_hw) + (hint,)
        found = self._variants.get(key)
        if found is not None:
            self._variants.move_to_end(key)
            return found
        t0 = time.monotonic()
        shrink = shrink_factor(frame_hw, self.size_hw)
        if key[0] == "any":
            try:
                compiled = self._compile_steps(ovcompat.ANY_SIZE, shrink, hint)
            except Exception as exc:  # noqa: BLE001 - e.g. NPU/MYRIAD: static shapes only
                self._dynamic = False
                log.warning("%s cannot take frames of any size (%s); one compiled variant per "
                            "frame size", self.device, " ".join(str(exc).split())[:200])
                if not fallback:
                    raise
                return self._variant(frame_hw, hint)
        else:
            compiled = self._compile_steps(None if key[0] == "model" else frame_hw, shrink,
                                           hint)
        out = ovcompat.output_index(compiled, self.manifest.output.name)
        figures_at = ovcompat.output_index(compiled, ovcompat.QUALITY_OUTPUT) \
            if self.quality is not None and self.decide else None
        queue = ovcompat.new_queue(compiled, self._requests[hint])
        queue.set_callback(self._make_done(out, figures_at))
        while len(self._variants) >= MAX_SIZES * len(self.hints):
            _, (_, old, _) = self._variants.popitem(last=False)
            old.wait_all()  # its callbacks still deliver; then it goes
        self._variants[key] = (compiled, queue, out)
        what = {"model": "model-size frames", "any": f"frames of any size (box {shrink})",
                "size": f"{frame_hw[1]}x{frame_hw[0]} frames"}[key[0]]
        log.info("compiled for %s%s (%s hint) in %.1fs", what,
                 " with the class decision" if self.decide else "", hint,
                 time.monotonic() - t0)
        return self._variants[key]

    def prepare(self, frame_hw: Tuple[int, int]) -> None:
        """Compile the variant for frames of ``frame_hw`` now, before a frame of that size is
        counted in flight (a compile is not a stalled inference); errors wait for submit."""
        if not self.resize_in_graph or frame_hw in self._failed_sizes:
            return
        with contextlib.suppress(Exception):  # submit resizes in Python and says why
            for hint in self.hints:
                self._variant(frame_hw, hint)

    def submit(self, tensor: np.ndarray, userdata: Any, source: Hashable = None) -> None:
        """Start one inference on [1, H, W, 3] u8 BGR (any H, W when ``resize_in_graph``,
        else the model's); blocks while all requests are busy. ``source``: the camera it
        came from (``auto`` switches sooner for several)."""
        hw = (int(tensor.shape[1]), int(tensor.shape[2]))
        if hw != self.size_hw and (not self.resize_in_graph or hw in self._failed_sizes):
            tensor, hw = to_model_input(tensor[0], self.size_hw), self.size_hw
        hint = self.hints[0]
        if self.policy is not None:
            with self._policy_lock:
                before = self.policy.switches
                hint = self.policy.submitted(time.monotonic(), source)
                if self.policy.switches != before:
                    log.info("performance hint now %s: latency-mode load %.2f of its capacity",
                             hint, self.policy.utilisation(time.monotonic()))
        try:
            _, queue, _ = self._variant(hw, hint)
        except Exception as exc:  # noqa: BLE001 - a size the graph cannot take: resize here
            if hw == self.size_hw:
                raise
            self._failed_sizes[hw] = " ".join(str(exc).split())[:200]
            log.warning("cannot resize %dx%d frames in the graph (%s); resizing in Python",
                        hw[1], hw[0], self._failed_sizes[hw])
            self.submit(to_model_input(tensor[0], self.size_hw), userdata)
            return
        queue.start_async({0: tensor}, (userdata, hint, time.monotonic()))

    def drain(self) -> None:
        for _, queue, _ in list(self._variants.values()):
            queue.wait_all()
        if self._queue is not None:
            self._queue.wait_all()

    def warmup(self) -> np.ndarray:
        """One synchronous inference on a black frame (first-run costs paid before frames)."""
        h, w = self.size_hw
        request = self._compiled.create_infer_request()
        request.infer({0: np.zeros((1, h, w, 3), np.uint8)})
        return np.array(ovcompat.output_array(request, self._out), copy=True)
