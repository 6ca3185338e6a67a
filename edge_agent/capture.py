"""Frames in: one reader thread per source, the latest frame wins.

The reader never waits for inference: a new frame replaces an unconsumed one
(counted as dropped). Open failures and lost streams are retried with
exponential backoff and jitter while the agent keeps running (status degraded).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import cv2
import numpy as np

from .config import SourceConfig, source_kind
from .supervisor import Backoff

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}
log = logging.getLogger("segedge.capture")


@dataclass
class Frame:
    frame_id: int
    image: np.ndarray
    captured_at: float  # Unix seconds
    captured_mono: float  # time.monotonic() at capture, for latency


class LatestFrame:
    """One-slot mailbox: put() replaces an unconsumed frame, get() waits for one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Optional[Frame] = None

    def put(self, item: Frame) -> bool:
        """Store ``item``; True when it replaced a frame nobody took (a drop)."""
        with self._cond:
            dropped = self._item is not None
            self._item = item
            self._cond.notify()
        return dropped

    def get(self, timeout: float) -> Optional[Frame]:
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout)
            item, self._item = self._item, None
        return item

    def depth(self) -> int:
        with self._cond:
            return int(self._item is not None)


class Reader:
    """The OpenCV reader behind one source; ``read()`` -> (ok, image)."""

    def __init__(self, uri: str, timeout_s: float) -> None:
        self.uri, self.kind = uri, source_kind(uri)
        self.is_file = self.kind in ("file", "dir")
        self.fps = 0.0
        self._cap: Any = None
        self._images: List[Path] = []
        self._pos = 0
        if self.kind == "dir":
            self._images = sorted(p for p in Path(uri).iterdir()
                                  if p.suffix.lower() in IMAGE_EXTS and p.is_file())
            if not self._images:
                raise OSError(f"no images in directory {uri}")
            return
        self._cap = self._open(timeout_s)
        if not self._cap.isOpened():
            self._cap.release()
            raise OSError(f"cannot open {self.kind} source {uri}")
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0.5 <= fps <= 240 else 0.0

    def _open(self, timeout_s: float) -> Any:
        if self.kind == "device":
            index: Any = int(self.uri) if self.uri.isdigit() else self.uri
            cap = cv2.VideoCapture(index, cv2.CAP_V4L2)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
            return cap
        if self.kind == "network" and timeout_s > 0:
            ms = int(timeout_s * 1000)
            try:
                return cv2.VideoCapture(self.uri, cv2.CAP_FFMPEG,
                                        [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms,
                                         cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
            except (TypeError, cv2.error):  # OpenCV without open params
                pass
        return cv2.VideoCapture(self.uri, cv2.CAP_FFMPEG)

    def read(self) -> Tuple[bool, Optional[np.ndarray]]:
        if self.kind == "dir":
            if self._pos >= len(self._images):
                return False, None
            path = self._images[self._pos]
            self._pos += 1
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if image is None:
                log.warning("unreadable image skipped: %s", path)
                return True, None
            return True, image
        return self._cap.read()

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


StateCallback = Callable[[bool, str], None]


class Capture(threading.Thread):
    """Reader thread: open, read, hand over the newest frame, reconnect on loss."""

    def __init__(self, cfg: SourceConfig, slot: LatestFrame, stop: threading.Event,
                 on_state: StateCallback, on_frame: Callable[[bool], None]) -> None:
        super().__init__(name="capture", daemon=True)
        self.cfg, self.slot, self.stop = cfg, slot, stop
        self.on_state, self.on_frame = on_state, on_frame
        self.finished = threading.Event()  # a non-looping file or dir reached its end
        self.frame_id = 0
        self.last_frame_mono = time.monotonic()
        self.backoff = Backoff(0.5, cfg.reconnect_max_s)
        self._ok = False  # frames are flowing; read and written under _state_lock
        self._state_lock = threading.Lock()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                reader = Reader(self.cfg.uri, self.cfg.stall_timeout_s)
            except (OSError, cv2.error) as exc:
                self._lost(str(exc))
                continue
            log.info("source opened: %s (%s%s)", self.cfg.uri, reader.kind,
                     f", {reader.fps:.1f} fps" if reader.fps else "")
            try:
                reason = self._pump(reader)
            finally:
                reader.close()
            if reason is None:
                break
            if reason == "eof":
                if self.cfg.loop:
                    continue
                log.info("source finished: %s", self.cfg.uri)
                self.finished.set()
                break
            self._lost(reason)
        self.finished.set()

    def check_stall(self, now: float) -> None:
        """Called by the supervisor loop: report a stall even while read() is blocked."""
        limit = self.cfg.stall_timeout_s
        age = now - self.last_frame_mono
        with self._state_lock:
            if limit and self._ok and self.frame_id and age > limit:
                self._ok = False
                log.warning("no frame for %.1fs", age)
                self.on_state(False, f"source: no frame for {age:.0f}s")

    def _lost(self, reason: str) -> None:
        delay = self.backoff.next_delay()
        log.warning("camera unavailable: %s; retry in %.1fs", reason, delay)
        with self._state_lock:
            self._ok = False
            self.on_state(False, f"source: {reason}")
        self.stop.wait(delay)

    def _pump(self, reader: Reader) -> Optional[str]:
        """Read until stop (None), end of file ('eof') or a failure (its reason)."""
        pace = self.cfg.fps or reader.fps or (10.0 if reader.kind == "dir" else 0.0)
        period = 1.0 / pace if reader.is_file and pace > 0 else 0.0
        next_t = time.monotonic()
        started = False  # on this connection
        while not self.stop.is_set():
            try:
                ok, image = reader.read()
            except cv2.error as exc:
                return f"read failed: {' '.join(str(exc).split())[:200]}"
            now = time.monotonic()
            if not ok:
                if reader.is_file:
                    return "eof" if started else f"{reader.kind} delivered no frame"
                waited = now - self.last_frame_mono
                return (f"no frame for {waited:.1f}s (stream ended or stalled)"
                        if started else "stream opened but delivered no frame")
            if image is None:
                continue
            self.frame_id += 1
            self.last_frame_mono = now
            dropped = self.slot.put(Frame(self.frame_id, image, time.time(), now))
            self.on_frame(dropped)
            started = True
            with self._state_lock:
                if not self._ok:
                    self._ok = True
                    self.backoff.reset()
                    self.on_state(True, "")
            if period:
                next_t = max(next_t + period, now - period)
                self.stop.wait(max(0.0, next_t - time.monotonic()))
        return None
