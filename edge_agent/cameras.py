"""The camera registry and its entries: each camera's settings, counters and outputs.

Every camera (a configured source, or a sender of frames over MQTT) owns one
``Camera``: its settings, counters, latency window, quality window, publish-rate limiter,
snapshot request and the functions that publish under its own topic id. Frames travel apart,
through ``edge_agent.sources.slots``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional

import numpy as np

from edge_agent.config import CameraConfig
from edge_agent.control.rules import CommandState
from edge_agent.health.pacing import RateLimiter
from edge_agent.health.stats import Counters, LatencyWindow
from edge_agent.quality.drift import QualityMonitor


class Snapshot:
    """One snapshot request: the next frame, its mask and an overlay, published at once.

    Two threads may finish it (the publish thread with the result, the commands thread
    on its timeout): the first outcome stands, so a reply never contradicts what was
    published."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: Optional[str] = None
        self._lock = threading.Lock()

    def finish(self, error: Optional[str]) -> bool:
        """Record the outcome; False (and nothing changed) when it was already finished."""
        with self._lock:
            if self.done.is_set():
                return False
            self.error = error
            self.done.set()
            return True


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
        self.quality: Optional[QualityMonitor] = None  # its figures' window ([quality])
        self.sampler: Optional[Any] = None  # quality.samples.Sampler when it saves samples

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


class CameraRegistry:
    """The agent's cameras by id: configured cameras and frames-in senders.

    Readers (the publish, main, metrics and frames-in threads) take the current map
    without a lock; the writers (main and frames-in threads) replace it whole under one
    lock, so a reader never sees a map being changed."""

    def __init__(self) -> None:
        self._by_id: Dict[str, Camera] = {}
        self._lock = threading.Lock()

    def get(self, camera_id: str) -> Optional[Camera]:
        return self._by_id.get(camera_id)

    def snapshot(self) -> Dict[str, Camera]:
        """The current map (never changed in place: safe to iterate)."""
        return self._by_id

    def add(self, camera: Camera) -> None:
        with self._lock:
            self._by_id = {**self._by_id, camera.id: camera}

    def remove(self, camera_id: str) -> Optional[Camera]:
        with self._lock:
            camera = self._by_id.get(camera_id)
            self._by_id = {k: v for k, v in self._by_id.items() if k != camera_id}
            return camera

    def __contains__(self, camera_id: object) -> bool:
        return camera_id in self._by_id

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)
