"""Frames in: one reader thread per source, the latest frame wins.

The reader never waits for inference: a new frame replaces an unconsumed one
(counted as dropped), except a file or directory with ``realtime = false``: read no
faster than inference takes its frames (each one inferred, none decoded in vain).
A source that stops delivering is reported within ``stall_timeout_s`` (the main loop
checks, even while a read blocks); a frame that arrives after such a gap may be old
(FFmpeg hands back buffered frames, one per read timeout), so it is dropped
(``stale``), and the source is live again only when ``RECOVER_FRAMES`` frames flow in
a row. While a network camera is away it is probed cheaply every ``PROBE_INTERVAL_S``
(TCP connect plus an RTSP OPTIONS or HTTP HEAD that must be answered); only the
expensive open is backed off, so a returning camera is back within seconds whatever
the outage length.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, List, Optional, Protocol, Tuple

import cv2
import numpy as np

from edge_agent.config import SourceConfig, source_kind
from edge_agent.health.pacing import Backoff
from edge_agent.sources.freshness import Liveness, probe, redact
from edge_agent.sources.slots import Frame

PROBE_INTERVAL_S = 1.0  # camera away: cheap probe this often
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}
log = logging.getLogger("segedge.capture")


class _Slot(Protocol):
    def put(self, item: Frame) -> bool: ...  # True: it replaced an unconsumed frame
    def wait_taken(self, timeout: float) -> bool: ...  # True once inference took it


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


StateCallback = Callable[[Optional[str]], None]  # None: live; else the health reason


class Capture(threading.Thread):
    """Reader thread: open, read, hand over the newest frame, reconnect on loss."""

    def __init__(self, cfg: SourceConfig, slot: _Slot, stop: threading.Event,
                 on_state: StateCallback, on_frame: Callable[[bool], None],
                 on_stale: Optional[Callable[[], None]] = None, name: str = "capture") -> None:
        super().__init__(name=name, daemon=True)
        self.cfg, self.slot, self.stop = cfg, slot, stop
        self.on_state, self.on_frame = on_state, on_frame
        self.on_stale = on_stale or (lambda: None)
        self.name_in_logs = redact(cfg.uri)
        self.finished = threading.Event()  # a non-looping file or dir reached its end
        self.frame_id = 0
        self.last_frame_mono = time.monotonic()
        self.backoff = Backoff(0.5, cfg.reconnect_max_s)
        self.liveness = Liveness(cfg.stall_timeout_s)
        self._state_lock = threading.Lock()  # liveness and the reported reason
        self._reason: Optional[str] = "waiting for first frame"
        self._logged: Optional[str] = None
        self._opened_once = False

    def done(self) -> bool:
        return self.finished.is_set()

    def run(self) -> None:
        network = source_kind(self.cfg.uri) == "network"
        while not self.stop.is_set():
            if network:
                why = probe(self.cfg.uri)
                if why:
                    self.backoff.reset()  # the camera is away: open at once when it answers
                    self._lost(f"camera unreachable: {why}", PROBE_INTERVAL_S)
                    continue
            try:
                reader = Reader(self.cfg.uri, self.cfg.stall_timeout_s)
            except (OSError, cv2.error) as exc:
                self._lost(" ".join(str(exc).replace(self.cfg.uri, self.name_in_logs).split()),
                           self.backoff.next_delay())
                continue
            level = logging.DEBUG if self._opened_once and reader.is_file else logging.INFO
            self._opened_once = True
            log.log(level, "source opened: %s (%s%s)", self.name_in_logs, reader.kind,
                    f", {reader.fps:.1f} fps" if reader.fps else "")
            with self._state_lock:
                self.liveness.connected()
            try:
                reason = self._pump(reader)
            finally:
                reader.close()
            if reason is None:
                break
            if reason == "eof":
                if self.cfg.loop:
                    continue
                log.info("source finished: %s", self.name_in_logs)
                self.finished.set()
                break
            self._lost(reason, 0.0 if network else self.backoff.next_delay())
        self.finished.set()

    def _set(self, reason: Optional[str]) -> None:
        """Report a change (under _state_lock)."""
        if reason == self._reason:
            return
        self._reason = reason
        self.on_state(None if reason is None else f"source: {reason}")

    def check_stall(self, now: float) -> None:
        """Called by the watchdog each tick: report a stall even while read() is blocked."""
        limit = self.cfg.stall_timeout_s
        age = now - self.last_frame_mono
        with self._state_lock:
            if limit and self.liveness.live and age > limit:
                self.liveness.lost()
                log.warning("source %s: no frame for %.1f s", self.name_in_logs, age)
                self._set(f"no frame for {age:.1f} s")

    def _lost(self, reason: str, delay: float) -> None:
        if reason != self._logged:
            self._logged = reason
            log.warning("source %s: %s; retrying", self.name_in_logs, reason)
        with self._state_lock:
            self.liveness.lost()
            if self._reason is None or not self._reason.startswith("no frame for") \
                    or not reason.startswith("no frame for"):
                self._set(reason)
        log.debug("source retry in %.1fs", delay)
        if delay:
            self.stop.wait(delay)

    def _pump(self, reader: Reader) -> Optional[str]:
        """Read until stop (None), end of file ('eof') or a failure (its reason)."""
        pace = self.cfg.fps or reader.fps or (10.0 if reader.kind == "dir" else 0.0)
        period = 1.0 / pace if reader.is_file and pace > 0 else 0.0
        next_t = time.monotonic()
        started = False  # on this connection
        last = time.monotonic()
        while not self.stop.is_set():
            try:
                ok, image = reader.read()
            except cv2.error as exc:
                return f"read failed: {' '.join(str(exc).split())[:200]}"
            now = time.monotonic()
            if not ok:
                if reader.is_file:
                    return "eof" if started else f"{reader.kind} delivered no frame"
                waited = now - last
                limit = self.cfg.stall_timeout_s
                if not started:
                    return "stream opened but delivered no frame"
                if limit and waited >= 0.9 * limit:
                    return f"no frame for {waited:.1f} s"
                return "stream ended"
            if image is None:
                continue
            gap, last = now - last, now
            with self._state_lock:
                fresh, became_live = self.liveness.frame(now)
                if became_live:
                    self.backoff.reset()
                    self._logged = None
                    self._set(None)
                elif not fresh and self._reason is None:  # stale before the watchdog saw it
                    self._set(f"no frame for {gap:.1f} s")
            self.last_frame_mono = now
            started = True
            if not fresh:
                self.on_stale()
                continue
            if reader.is_file and not self.cfg.realtime:  # one frame ahead of inference
                while not self.slot.wait_taken(0.2) and not self.stop.is_set():
                    pass
                now = last = time.monotonic()  # waiting for inference is not a stall
                with self._state_lock:
                    self.liveness.waited(now)
                self.last_frame_mono = now
            self.frame_id += 1
            dropped = self.slot.put(Frame(self.frame_id, image, time.time(), now))
            self.on_frame(dropped)
            if period:
                next_t = max(next_t + period, now - period)
                self.stop.wait(max(0.0, next_t - time.monotonic()))
        return None
