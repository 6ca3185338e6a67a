"""The frame path: latest frame -> inference (async, in flight) -> in-order publish.

Two named threads. ``infer`` takes the newest frame, waits for a free slot and
starts an async request; OpenVINO's callback files the result under its
submission number; ``publish`` takes results strictly in that order, applies the
publish-rate limit, postprocesses, encodes and hands the mask to MQTT. Slots
bound everything in between.
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

from . import encoding, postprocess
from .capture import LatestFrame
from .config import OutputConfig
from .inference import Engine
from .messages import Frame, Mask
from .preprocess import as_bgr, to_model_input
from .resilience import RateLimiter
from .stagetime import StageTimes
from .stats import Counters, LatencyWindow

log = logging.getLogger("segedge.pipeline")


@dataclass(frozen=True)
class FrameMeta:
    seq: int
    frame_id: int
    captured_at: float
    captured_mono: float
    frame_hw: Tuple[int, int]
    image: Optional[np.ndarray] = None  # kept only when frames are published
    submitted_mono: float = 0.0


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


class Pipeline:
    """``max_age_s``: a frame older than this at publish time is dropped as stale (0 = never)."""

    def __init__(self, engine: Engine, out: OutputConfig, device_id: str, slot: LatestFrame,
                 counters: Counters, latency: LatencyWindow, stop: threading.Event,
                 send: Callable[[str], bool],
                 send_frame: Optional[Callable[[str], bool]] = None,
                 max_age_s: float = 0.0) -> None:
        self.engine, self.out, self.device_id = engine, out, device_id
        self.slot, self.counters, self.latency, self.stop = slot, counters, latency, stop
        self.send, self.send_frame = send, send_frame
        self.max_age_s = max_age_s
        self.reorder = Reorder()
        self.slots = threading.BoundedSemaphore(engine.num_requests + 2)
        self.infer_done = threading.Event()
        self.limiter = RateLimiter(out.max_publish_fps)
        self.classes = list(engine.classes)
        ncls = postprocess.num_classes(self.classes, engine.output_channels)
        self.classes += [f"class{i}" for i in range(len(self.classes), ncls)]
        self._last_bad_log = 0.0
        self._masks_sent = 0
        self.times = StageTimes()  # per-stage CPU for the benchmark; off by default
        # decision state (the watchdog's stall check), kept apart from the stats counters
        self._progress_lock = threading.Lock()
        self.submitted = 0
        self._received = 0
        self._progress_mono = time.monotonic()
        self.threads = [threading.Thread(target=self._publish_loop, name="publish", daemon=True),
                        threading.Thread(target=self._infer_loop, name="infer", daemon=True)]

    def start(self) -> None:
        # the class decision in the graph where masks are at model resolution
        self.engine.start(self._on_result, decide=self.out.mask_resolution == "model")
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

    def inflight(self) -> int:
        with self._progress_lock:
            return max(0, self.submitted - self._received - self.reorder.skipped)

    def stalled_for(self, now: float) -> float:
        """Seconds requests have been in flight without any result (0 when none are)."""
        with self._progress_lock:
            busy = self.submitted - self._received - self.reorder.skipped > 0
            return now - self._progress_mono if busy else 0.0

    def _on_result(self, meta: Optional[FrameMeta], output: Optional[np.ndarray]) -> None:
        if meta is None:
            return
        with self._progress_lock:
            self._received += 1
            self._progress_mono = time.monotonic()
        self.counters.add("inferred")
        if self.times.enabled:
            self.times.span("submit_to_result", time.monotonic() - meta.submitted_mono)
        self.reorder.put(meta.seq, (meta, output))

    def _infer_loop(self) -> None:
        try:
            while not self.stop.is_set():
                frame = self.slot.get(0.2)
                if frame is None:
                    continue
                t0 = self.times.start()
                try:
                    tensor = to_model_input(frame.image, None if self.engine.resize_in_graph
                                            else self.engine.size_hw)
                except (ValueError, TypeError) as exc:
                    self._bad_frame(frame.frame_id, exc)
                    continue
                self.times.stop("preprocess", t0)
                while not self.slots.acquire(timeout=0.2):
                    if self.stop.is_set():
                        return
                with self._progress_lock:
                    meta = FrameMeta(self.submitted, frame.frame_id, frame.captured_at,
                                     frame.captured_mono, tuple(frame.image.shape[:2]),
                                     frame.image if self.out.frame_every else None,
                                     time.monotonic())
                    if self.submitted - self._received - self.reorder.skipped <= 0:
                        self._progress_mono = time.monotonic()  # idle until now: no stall
                    self.submitted += 1
                t0 = self.times.start()
                self.engine.submit(tensor, meta)
                self.times.stop("submit", t0)
        finally:
            self.engine.drain()
            self.infer_done.set()

    def _bad_frame(self, frame_id: int, exc: Exception) -> None:
        self.counters.add("errors")
        now = time.monotonic()
        if now - self._last_bad_log > 10:
            self._last_bad_log = now
            log.warning("frame %d skipped: %s", frame_id, exc)

    def _publish_loop(self) -> None:
        while True:
            item = self.reorder.pop(0.2)
            if self.times.enabled:
                self.times.maybe_write(self.counters.snapshot())
            if item is None:
                if self.infer_done.is_set() and not len(self.reorder):
                    if self.times.enabled:
                        self.times.maybe_write(self.counters.snapshot(), force=True)
                    return
                continue
            self.slots.release()
            if item is SKIPPED:
                self.counters.add("errors")
                continue
            meta, output = item
            if output is None:
                self.counters.add("errors")
                continue
            now = time.monotonic()
            if self.max_age_s and now - meta.captured_mono > self.max_age_s:
                self.counters.add("stale")  # never publish an old frame as new
                continue
            if not self.limiter.allow(now):
                self.counters.add("skipped_rate")
                continue
            try:
                payload, latency_ms = self.build_mask(meta, output)
            except (ValueError, TypeError) as exc:
                self._bad_frame(meta.frame_id, exc)
                continue
            every = self.out.frame_every
            if every and self.send_frame and self._masks_sent % every == 0:
                self._send_frame(meta)  # before its mask, so overlays find it
            t0 = self.times.start()
            sent = self.send(payload)
            self.times.stop("publish", t0)
            if self.times.enabled:
                self.times.span("capture_to_submit", meta.submitted_mono - meta.captured_mono)
                self.times.span("capture_to_sent", time.monotonic() - meta.captured_mono)
            if sent:
                self._masks_sent += 1
                self.counters.add("published")
                self.latency.add(latency_ms)

    def _send_frame(self, meta: FrameMeta) -> None:
        try:
            ok, jpg = cv2.imencode(".jpg", as_bgr(meta.image), [cv2.IMWRITE_JPEG_QUALITY, 80])
        except (ValueError, cv2.error):
            return
        if ok:
            self.send_frame(Frame(
                device_id=self.device_id, frame_id=meta.frame_id,
                captured_at=round(meta.captured_at, 6), width=int(meta.frame_hw[1]),
                height=int(meta.frame_hw[0]),
                image=base64.b64encode(jpg.tobytes()).decode("ascii")).to_json())

    def build_mask(self, meta: FrameMeta, output: np.ndarray) -> Tuple[str, float]:
        t0 = self.times.start()
        mask = postprocess.to_frame_mask(output, self.engine.result_kind,
                                         meta.frame_hw if self.out.mask_resolution == "frame"
                                         else None)
        cov = postprocess.coverage(mask, len(self.classes))
        t0 = self.times.stop("postprocess", t0)
        data = encoding.encode(mask, self.out.mask_encoding)
        t0 = self.times.stop("encode", t0)
        published_at = time.time()
        latency_ms = round((time.monotonic() - meta.captured_mono) * 1000.0, 2)
        msg = Mask(device_id=self.device_id, frame_id=meta.frame_id,
                   captured_at=round(meta.captured_at, 6), published_at=round(published_at, 6),
                   latency_ms=latency_ms, width=int(mask.shape[1]), height=int(mask.shape[0]),
                   frame_width=int(meta.frame_hw[1]), frame_height=int(meta.frame_hw[0]),
                   classes=self.classes, coverage=dict(zip(self.classes, cov)),
                   encoding=self.out.mask_encoding, mask=data, model=self.engine.info,
                   device=self.engine.device)
        text = msg.to_json()
        self.times.stop("message", t0)
        return text, latency_ms
