"""Frame slots: the newest unconsumed frame of each camera, handed to inference in turn.

Runs on the capture/frames-in threads (``put``) and the inference thread (``take``).
Latest wins per camera: a new frame replaces the one inference did not take yet, counted
as dropped by the caller. When inference is the bottleneck every camera with a frame
ready gets one inference per round, and a slow or silent camera never holds the others
up (``next_ready`` is the rule, pure).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np


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
