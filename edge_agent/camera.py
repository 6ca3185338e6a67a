"""Many cameras, one model: the per-camera state and the fair hand-over of frames.

Every camera (a configured source, or a sender of frames over MQTT) owns one
``Camera``: its settings, counters, latency window, publish-rate limiter, snapshot
request and the functions that publish under its own topic id. ``FrameSlots`` holds
the newest unconsumed frame of each camera (latest wins per camera: a new frame
replaces the one inference did not take yet, counted as dropped) and hands them to
the single inference thread in turn, so when inference is the bottleneck every
camera with a frame ready gets one inference per round, and a slow or silent camera
never holds the others up (``next_ready`` is the rule, pure).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .commands import CommandState
from .config import CameraConfig
from .resilience import RateLimiter
from .stats import Counters, LatencyWindow


@dataclass
class Frame:
    frame_id: int
    image: np.ndarray
    captured_at: float  # Unix seconds
    captured_mono: float  # time.monotonic() at capture, for latency
    reply_to: Optional[str] = None  # MQTT 5 response topic of a frame sent to us
    correlation: Optional[bytes] = None  # and its correlation data


def next_ready(order: Sequence[str], ready: Callable[[str], bool],
               last: Optional[str]) -> Optional[str]:
    """Round robin: the first camera after ``last`` in ``order`` with a frame ready."""
    if not order:
        return None
    start = order.index(last) + 1 if last in order else 0
    for i in range(len(order)):
        camera_id = order[(start + i) % len(order)]
        if ready(camera_id):
            return camera_id
    return None


class FrameSlots:
    """One latest-frame slot per camera behind one condition; ``take`` serves in turn."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: Dict[str, Optional[Frame]] = {}
        self._order: List[str] = []
        self._last: Optional[str] = None

    def add(self, camera_id: str) -> None:
        with self._cond:
            if camera_id not in self._items:
                self._items[camera_id] = None
                self._order.append(camera_id)

    def remove(self, camera_id: str) -> None:
        with self._cond:
            if camera_id in self._items:
                del self._items[camera_id]
                self._order.remove(camera_id)

    def put(self, camera_id: str, frame: Frame) -> Tuple[bool, Optional[Frame]]:
        """Store ``frame``: (accepted, the unconsumed frame it replaced, if any)."""
        with self._cond:
            if camera_id not in self._items:
                return False, None
            replaced = self._items[camera_id]
            self._items[camera_id] = frame
            self._cond.notify_all()  # the infer thread, whoever else waits here
        return True, replaced

    def take(self, timeout: float) -> Optional[Tuple[str, Frame]]:
        """The next camera's frame in round-robin order, waiting up to ``timeout``."""
        with self._cond:
            camera_id = next_ready(self._order, lambda c: self._items[c] is not None,
                                   self._last)
            if camera_id is None:
                self._cond.wait(timeout)
                camera_id = next_ready(self._order, lambda c: self._items[c] is not None,
                                       self._last)
                if camera_id is None:
                    return None
            frame, self._items[camera_id] = self._items[camera_id], None
            self._last = camera_id
            self._cond.notify_all()  # a reader waiting for its frame to be taken
            return camera_id, frame

    def wait_taken(self, camera_id: str, timeout: float) -> bool:
        """Wait until the camera's frame was taken (or it is gone); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._items.get(camera_id) is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def depth(self, camera_id: Optional[str] = None) -> int:
        """Frames waiting: of one camera (0/1), or of all."""
        with self._cond:
            if camera_id is not None:
                return int(self._items.get(camera_id) is not None)
            return sum(item is not None for item in self._items.values())

    def slot(self, camera_id: str) -> CameraSlot:
        self.add(camera_id)
        return CameraSlot(self, camera_id)


class CameraSlot:
    """What a reader sees: ``put(frame)`` -> True when it replaced an unconsumed frame."""

    def __init__(self, slots: FrameSlots, camera_id: str) -> None:
        self.slots, self.camera_id = slots, camera_id

    def put(self, frame: Frame) -> bool:
        _, replaced = self.slots.put(self.camera_id, frame)
        return replaced is not None

    def depth(self) -> int:
        return self.slots.depth(self.camera_id)

    def wait_taken(self, timeout: float) -> bool:
        return self.slots.wait_taken(self.camera_id, timeout)


class Snapshot:
    """One snapshot request: the next frame, its mask and an overlay, published at once."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: Optional[str] = None

    def finish(self, error: Optional[str]) -> None:
        self.error = error
        self.done.set()


@dataclass
class Outputs:
    """Where one camera's messages go (MqttComms, bound to the camera's topic id)."""

    mask: Callable[[str], bool]
    frame: Optional[Callable[[str], bool]] = None
    overlay: Optional[Callable[[bytes], bool]] = None
    reply: Optional[Callable[[str, str, Optional[bytes]], bool]] = None  # topic, text, corr.


class Camera:
    """The run-time state of one camera; the publish thread is the only writer of its
    limiter, overlay clock and last mask, the capture (or frames-in) thread of its frame
    ids, the command thread of its snapshot request."""

    def __init__(self, cfg: CameraConfig, outputs: Outputs,
                 settings: Optional[Callable[[], CommandState]] = None,
                 totals: Optional[Counters] = None,
                 total_latency: Optional[LatencyWindow] = None) -> None:
        """``totals``/``total_latency``: the agent's sums, also fed (None: this camera's
        counters are the agent's, the single-camera form)."""
        self.id, self.cfg, self.outputs = cfg.id, cfg, outputs
        fixed = CommandState(False, cfg.max_publish_fps, cfg.frame_every, cfg.mask_encoding)
        self.settings = settings or (lambda: fixed)
        self.counters = Counters()
        self.latency = LatencyWindow()
        self.totals, self.total_latency = totals, total_latency
        self.max_age_s = cfg.source.stall_timeout_s
        self.overlay_interval_s = cfg.overlay_interval_s
        self.next_overlay = 0.0
        self.limiter = RateLimiter(cfg.max_publish_fps)
        self.limit_fps = cfg.max_publish_fps
        self.last_mask: Optional[np.ndarray] = None
        self.masks_sent = 0
        self.stats_seq = 0
        self._lock = threading.Lock()
        self._snapshot: Optional[Snapshot] = None
        self.frame_id = 0  # frames-in: the sender's last frame id (ours when it sends none)
        self.observe_latency: Optional[Callable[[float], None]] = None  # set by [metrics]

    def count(self, name: str, n: int = 1) -> None:
        self.counters.add(name, n)
        if self.totals is not None:
            self.totals.add(name, n)

    def add_latency(self, ms: float) -> None:
        self.latency.add(ms)
        if self.observe_latency is not None:  # [metrics]: the histogram
            self.observe_latency(ms)
        if self.total_latency is not None:
            self.total_latency.add(ms)

    def allow(self, now: float, max_publish_fps: float) -> bool:
        """The publish-rate limit (publish thread), following commanded changes."""
        if max_publish_fps != self.limit_fps:
            self.limit_fps = max_publish_fps
            self.limiter = RateLimiter(max_publish_fps)
        return self.limiter.allow(now)

    # --- snapshots (commands thread asks, publish thread answers) --------------------
    def request_snapshot(self) -> Optional[Snapshot]:
        """A new snapshot request, or None while one is pending (one at a time)."""
        with self._lock:
            if self._snapshot is not None and not self._snapshot.done.is_set():
                return None
            self._snapshot = Snapshot()
            return self._snapshot

    def pending_snapshot(self) -> Optional[Snapshot]:
        snap = self._snapshot
        return snap if snap is not None and not snap.done.is_set() else None
