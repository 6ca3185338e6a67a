"""The frame path: latest frames -> inference (async, in flight) -> in-order publish.

Two named threads serve every camera of the agent with one compiled model. ``infer``
takes the next camera's newest frame (``FrameSlots``: round robin over the cameras
with a frame ready), waits for a free request slot and starts an async request;
OpenVINO's callback files the result under its submission number; ``publish`` takes
results strictly in that order (so each camera's masks are in frame order), applies
that camera's publish-rate limit, postprocesses, encodes and hands the mask to MQTT
under the camera's id (and, for a frame sent with an MQTT 5 response topic, to that
topic too). Slots bound everything in between.

Each frame's confidence figures (edge_agent.quality.figures) come from the graph with the
result, or, at frame resolution (scores, no decision in the graph), from the scores in the
publish thread; they go into the mask message and the camera's quality window
(``camera.quality``), for every inferred frame that is not stale or paused.

Runtime settings (pause, publish rate, frame interval, mask encoding) come from each
camera's ``settings()``, a frozen ``CommandState`` read once per frame
(edge_agent.control.service owns it). A snapshot request and a model swap (``reload``) are
one-shot hand-overs taken by the publish and infer threads respectively.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import cv2
import numpy as np

from edge_agent.cameras import Camera
from edge_agent.health.pacing import LogThrottle
from edge_agent.health.stats import Counters
from edge_agent.inference import postprocess
from edge_agent.inference.engine import Engine
from edge_agent.inference.preprocess import as_bgr, to_model_input
from edge_agent.inference.stagetime import StageTimes
from edge_agent.protocol import encoding, overlay
from edge_agent.protocol.messages import Frame, Mask
from edge_agent.quality.figures import FrameFigures, frame_figures
from edge_agent.sources.slots import FrameSlots

log = logging.getLogger("segedge.pipeline")


@dataclass(frozen=True)
class FrameMeta:
    seq: int
    camera_id: str
    frame_id: int
    captured_at: float
    captured_mono: float
    frame_hw: Tuple[int, int]
    image: Optional[np.ndarray] = None  # kept only when frames or overlays may be published
    engine: Any = None  # the engine that ran it (a reload swaps engines between frames)
    submitted_mono: float = 0.0
    reply_to: Optional[str] = None  # MQTT 5 response topic of a frame sent to us
    correlation: Optional[bytes] = None


SKIPPED = object()  # Reorder.pop: a result that never came, given up on
GAP_TIMEOUT_S = 5.0


class Reorder:
    """Results keyed by submission number, released strictly in order.

    A number still missing ``gap_timeout`` seconds after a later result arrived
    (a request whose callback never came) is skipped: pop returns ``SKIPPED``.
    """

    def __init__(self, gap_timeout: float = GAP_TIMEOUT_S) -> None:
        self._cond = threading.Condition()
        self._items: Dict[int, Any] = {}
        self._next = 0
        self.gap_timeout = gap_timeout
        self._gap_since: Optional[float] = None
        self.skipped = 0

    def put(self, seq: int, item: Any) -> None:
        with self._cond:
            if seq < self._next:  # arrived after it was skipped
                return
            self._items[seq] = item
            self._cond.notify_all()

    def pop(self, timeout: float) -> Optional[Any]:
        with self._cond:
            if self._next not in self._items:
                self._cond.wait(timeout)
            if self._next not in self._items:
                if not self._items:
                    self._gap_since = None
                    return None
                now = time.monotonic()
                if self._gap_since is None:
                    self._gap_since = now
                if now - self._gap_since < self.gap_timeout:
                    return None
                log.error("result %d never arrived after %.0fs; skipped", self._next,
                          now - self._gap_since)
                self._gap_since = None
                self._next += 1
                self.skipped += 1
                return SKIPPED
            self._gap_since = None
            item = self._items.pop(self._next)
            self._next += 1
            return item

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


Cameras = Callable[[str], Optional[Camera]]  # the camera of an id (None: gone)


class Pipeline:
    """One engine for every camera: ``slots`` hands over their frames, ``cameras(id)``
    their state (settings, counters, outputs), ``totals`` counts for the whole agent.

    ``mask_resolution``: ``model`` or ``frame`` (output.mask_resolution). A frame older
    than its camera's ``max_age_s`` at publish time is dropped as stale (0 = never).
    """

    def __init__(self, engine: Engine, mask_resolution: str, slots: FrameSlots,
                 cameras: Cameras, totals: Counters, stop: threading.Event,
                 quality: Optional[Callable[[Any], Optional[float]]] = None) -> None:
        """``quality(engine)``: the threshold of that engine's figures (None: none)."""
        self.engine, self.mask_resolution = engine, mask_resolution
        self.quality = quality or (lambda _engine: None)
        self.slots, self.cameras, self.totals, self.stop = slots, cameras, totals, stop
        self._new_engine: Optional[Tuple[Engine, threading.Event]] = None  # taken by infer
        self.reorder = Reorder()
        self.slots_free = threading.BoundedSemaphore(engine.num_requests + 2)
        self.infer_done = threading.Event()
        self._bad_note = LogThrottle(10.0)  # skipped frames: a line per 10 s at most
        self._masks_sent = 0
        self.times = StageTimes()  # per-stage CPU for the benchmark; off by default
        self.observe_inference: Optional[Callable[[str, float], None]] = None  # [metrics]
        # decision state (the watchdog's stall check), kept apart from the stats counters
        self._progress_lock = threading.Lock()
        self.submitted = 0
        self._received = 0
        self._progress_mono = time.monotonic()
        self.threads = [threading.Thread(target=self._publish_loop, name="publish", daemon=True),
                        threading.Thread(target=self._infer_loop, name="infer", daemon=True)]

    def start(self) -> None:
        # the class decision (and the figures) in the graph where masks are at model size
        self.engine.start(self._on_result, decide=self._decide_in_graph(),
                          quality=self.quality(self.engine))
        for t in self.threads:
            t.start()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in reversed(self.threads):
            t.join(max(0.0, deadline - time.monotonic()))

    def alive(self) -> bool:
        return all(t.is_alive() for t in self.threads)

    @property
    def masks_sent(self) -> int:
        return self._masks_sent

    def _decide_in_graph(self) -> bool:
        """Masks at model size: the class decision runs in the graph (frame size: the
        scores are upsampled first, in Python)."""
        return self.mask_resolution == "model"

    def swap_engine(self, engine: Engine) -> threading.Event:
        """Hand a loaded, warmed-up engine to the infer thread; the event is set once it
        runs the new one (the old one drained: its results are still published)."""
        done = threading.Event()
        with self._progress_lock:
            self._new_engine = (engine, done)
        return done

    def _take_new_engine(self) -> None:
        with self._progress_lock:
            pending, self._new_engine = self._new_engine, None
        if pending is None:
            return
        engine, done = pending
        old = self.engine
        old.drain()  # every result of the old model is in the reorder buffer now
        engine.start(self._on_result, decide=self._decide_in_graph(),
                     quality=self.quality(engine))
        self.engine = engine
        log.info("model swapped: %s %s -> %s %s", old.info.name, old.info.version,
                 engine.info.name, engine.info.version)
        done.set()

    def inflight(self) -> int:
        with self._progress_lock:
            return max(0, self.submitted - self._received - self.reorder.skipped)

    def stalled_for(self, now: float) -> float:
        """Seconds requests have been in flight without any result (0 when none are)."""
        with self._progress_lock:
            busy = self.submitted - self._received - self.reorder.skipped > 0
            return now - self._progress_mono if busy else 0.0

    def _on_result(self, meta: Optional[FrameMeta], output: Optional[np.ndarray],
                   figures: Optional[FrameFigures] = None) -> None:
        if meta is None:
            return
        with self._progress_lock:
            self._received += 1
            self._progress_mono = time.monotonic()
        camera = self.cameras(meta.camera_id)
        if camera is not None:
            camera.count("inferred")
        if self.times.enabled:
            self.times.span("submit_to_result", time.monotonic() - meta.submitted_mono)
        if self.observe_inference is not None:  # [metrics]: the histogram
            self.observe_inference(meta.camera_id, time.monotonic() - meta.submitted_mono)
        self.reorder.put(meta.seq, (meta, output, figures))

    def _infer_loop(self) -> None:
        try:
            while not self.stop.is_set():
                if self._new_engine is not None:
                    self._take_new_engine()
                taken = self.slots.take(0.2)
                if taken is None:
                    continue
                camera_id, frame = taken
                camera = self.cameras(camera_id)
                if camera is None:
                    continue  # a sender forgotten since its frame came
                state = camera.settings()
                snapshot = camera.pending_snapshot() is not None
                if state.paused and not snapshot:
                    continue  # paused: frames are read (the source stays live), not inferred
                t0 = self.times.start()
                try:
                    tensor = to_model_input(frame.image, None if self.engine.resize_in_graph
                                            else self.engine.size_hw)
                except (ValueError, TypeError) as exc:
                    self._bad_frame(camera, frame.frame_id, exc)
                    continue
                self.times.stop("preprocess", t0)
                self.engine.prepare(tuple(tensor.shape[1:3]))  # a compile is not a stall
                while not self.slots_free.acquire(timeout=0.2):
                    if self.stop.is_set():
                        return
                with self._progress_lock:
                    keep = state.frame_every or camera.overlay_interval_s or snapshot \
                        or camera.sampler is not None
                    meta = FrameMeta(self.submitted, camera_id, frame.frame_id,
                                     frame.captured_at, frame.captured_mono,
                                     tuple(frame.image.shape[:2]),
                                     frame.image if keep else None, self.engine,
                                     time.monotonic(), frame.reply_to, frame.correlation)
                    if self.submitted - self._received - self.reorder.skipped <= 0:
                        self._progress_mono = time.monotonic()  # idle until now: no stall
                    self.submitted += 1
                t0 = self.times.start()
                self.engine.submit(tensor, meta, camera_id)
                self.times.stop("submit", t0)
        finally:
            self.engine.drain()
            self.infer_done.set()

    def _bad_frame(self, camera: Camera, frame_id: int, exc: Exception) -> None:
        camera.count("errors")
        if self._bad_note.allow():
            log.warning("%s: frame %d skipped: %s", camera.id, frame_id, exc)

    def _publish_loop(self) -> None:
        while True:
            item = self.reorder.pop(0.2)
            if self.times.enabled:
                self.times.maybe_write(self.totals.snapshot())
            if item is None:
                if self.infer_done.is_set() and not len(self.reorder):
                    if self.times.enabled:
                        self.times.maybe_write(self.totals.snapshot(), force=True)
                    return
                continue
            self.slots_free.release()
            if item is SKIPPED:
                self.totals.add("errors")
                continue
            meta, output, figures = item
            camera = self.cameras(meta.camera_id)
            if camera is None:
                continue  # a sender forgotten while its frame was in flight
            self._publish_one(camera, meta, output, figures)

    def _publish_one(self, camera: Camera, meta: FrameMeta, output: Optional[np.ndarray],
                     figures: Optional[FrameFigures] = None) -> None:
        if output is None:
            camera.count("errors")
            return
        now = time.monotonic()
        if camera.max_age_s and now - meta.captured_mono > camera.max_age_s:
            camera.count("stale")  # never publish an old frame as new
            return
        state = camera.settings()
        snap = camera.pending_snapshot() if meta.image is not None else None
        if state.paused and snap is None:
            return  # in flight when the pause came: not published
        figures = self._observe(camera, meta, output, figures)
        allowed = snap is not None or camera.allow(now, state.max_publish_fps)
        if not allowed and meta.reply_to is None:
            camera.count("skipped_rate")
            return
        try:
            payload, latency_ms = self.build_mask(camera, meta, output, state.mask_encoding,
                                                  figures)
        except (ValueError, TypeError) as exc:
            self._bad_frame(camera, meta.frame_id, exc)
            return
        if meta.reply_to is not None and camera.outputs.reply is not None \
                and camera.outputs.reply(meta.reply_to, payload, meta.correlation):
            camera.count("replied")
        if not allowed:
            camera.count("skipped_rate")  # answered its request; not on the mask topic
            return
        if camera.sampler is not None:
            self._offer_sample(camera, meta, figures)
        every = state.frame_every
        if snap is not None or (every and camera.outputs.frame
                                and camera.masks_sent % every == 0):
            self._send_frame(camera, meta)  # before its mask, so overlays find it
        t0 = self.times.start()
        sent = camera.outputs.mask(payload)
        self.times.stop("publish", t0)
        if self.times.enabled:
            self.times.span("capture_to_submit", meta.submitted_mono - meta.captured_mono)
            self.times.span("capture_to_sent", time.monotonic() - meta.captured_mono)
        if sent:
            camera.masks_sent += 1
            self._masks_sent += 1
            camera.count("published")
            camera.add_latency(latency_ms)
        if snap is not None or (camera.overlay_interval_s and now >= camera.next_overlay):
            camera.next_overlay = now + camera.overlay_interval_s
            overlay_sent = self._send_overlay(camera, meta)
            if snap is not None:
                snap.finish(None if sent and overlay_sent else
                            "not handed to the broker (disconnected or a backlog)")

    def _observe(self, camera: Camera, meta: FrameMeta, output: np.ndarray,
                 figures: Optional[FrameFigures]) -> Optional[FrameFigures]:
        """The frame's figures (the graph's, or computed here from the scores) into the
        camera's quality window; returns them for the mask message."""
        engine = meta.engine or self.engine
        threshold = getattr(engine, "quality", None)
        if camera.quality is None or threshold is None:
            return None
        t0 = self.times.start()
        kind = engine.result_kind
        try:
            if figures is None and kind != "classes":
                figures = frame_figures(output, kind, threshold)  # None: not finite
            share = postprocess.foreground_share(output, kind)
        except ValueError:
            figures, share = None, 0.0
        camera.quality.add(figures, share)
        self.times.stop("quality", t0)
        return figures
    def _offer_sample(self, camera: Camera, meta: FrameMeta, figures: Any) -> None:
        """The camera's sampler sees the published frame and its mask (a chosen one is
        written on the samples thread). ``figures``: the frame's quality figures
        (``uncertain``, ``margin``) or None (then only random picks are made)."""
        if meta.image is None or camera.last_mask is None:
            return
        camera.sampler.offer(meta.frame_id, meta.captured_at, meta.image, camera.last_mask,
                             figures, meta.engine or self.engine)

    def _send_overlay(self, camera: Camera, meta: FrameMeta) -> bool:
        """The frame with the last mask, legend and caption, as JPEG on the overlay topic."""
        if camera.outputs.overlay is None or meta.image is None or camera.last_mask is None:
            return False
        classes = (meta.engine or self.engine).classes
        cov = postprocess.coverage(camera.last_mask, len(classes))
        label = overlay.Caption(camera.id, meta.frame_id, coverage=list(zip(classes, cov))[1:])
        try:
            image = overlay.draw(camera.last_mask, as_bgr(meta.image), classes, label)
            ok, jpg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 75])
        except (ValueError, cv2.error) as exc:
            self._bad_frame(camera, meta.frame_id, exc)
            return False
        return bool(ok) and camera.outputs.overlay(jpg.tobytes())

    def _send_frame(self, camera: Camera, meta: FrameMeta) -> None:
        try:
            ok, jpg = cv2.imencode(".jpg", as_bgr(meta.image), [cv2.IMWRITE_JPEG_QUALITY, 80])
        except (ValueError, cv2.error):
            return
        if ok and camera.outputs.frame is not None:
            camera.outputs.frame(Frame(
                device_id=camera.id, frame_id=meta.frame_id,
                captured_at=round(meta.captured_at, 6), width=int(meta.frame_hw[1]),
                height=int(meta.frame_hw[0]),
                image=base64.b64encode(jpg.tobytes()).decode("ascii")).to_json())

    def build_mask(self, camera: Camera, meta: FrameMeta, output: np.ndarray,
                   mask_encoding: Optional[str] = None,
                   figures: Optional[FrameFigures] = None) -> Tuple[str, float]:
        t0 = self.times.start()
        engine = meta.engine or self.engine
        classes = engine.classes
        mask_encoding = mask_encoding or camera.cfg.mask_encoding
        mask = postprocess.to_frame_mask(output, engine.result_kind,
                                         meta.frame_hw if self.mask_resolution == "frame"
                                         else None)
        camera.last_mask = mask
        cov = postprocess.coverage(mask, len(classes))
        t0 = self.times.stop("postprocess", t0)
        data = encoding.encode(mask, mask_encoding)
        t0 = self.times.stop("encode", t0)
        published_at = time.time()
        latency_ms = round((time.monotonic() - meta.captured_mono) * 1000.0, 2)
        msg = Mask(device_id=camera.id, frame_id=meta.frame_id,
                   captured_at=round(meta.captured_at, 6), published_at=round(published_at, 6),
                   latency_ms=latency_ms, width=int(mask.shape[1]), height=int(mask.shape[0]),
                   frame_width=int(meta.frame_hw[1]), frame_height=int(meta.frame_hw[0]),
                   classes=classes, coverage=dict(zip(classes, cov)),
                   encoding=mask_encoding, mask=data, model=engine.info,
                   device=engine.device,
                   quality=figures.to_dict() if figures is not None else None)
        text = msg.to_json()
        self.times.stop("message", t0)
        return text, latency_ms
