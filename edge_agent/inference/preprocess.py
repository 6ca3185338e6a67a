"""Frame hygiene before inference: any camera frame -> u8 BGR NHWC at model size.

Colour order, float conversion, layout and normalisation live inside the model
(ovcompat.add_preprocessing), so this is one resize and a view per frame (no resize at
all when the graph resizes: inference.RESIZE_IN_GRAPH).
"""

from __future__ import annotations

from typing import Optional, Tuple

import cv2
import numpy as np


def as_bgr(frame: np.ndarray) -> np.ndarray:
    """Grayscale, BGRA or non-u8 frames -> contiguous u8 BGR; raises ValueError on garbage."""
    if not isinstance(frame, np.ndarray) or frame.size == 0:
        raise ValueError("empty frame")
    if frame.dtype != np.uint8:
        if np.issubdtype(frame.dtype, np.floating) and frame.max(initial=0) <= 1.0:
            frame = frame * 255.0
        frame = np.clip(frame, 0, 255).astype(np.uint8)
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
        return cv2.cvtColor(frame.reshape(frame.shape[:2]), cv2.COLOR_GRAY2BGR)
    if frame.ndim != 3:
        raise ValueError(f"frame with shape {frame.shape} is not an image")
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    if frame.shape[2] != 3:
        raise ValueError(f"frame with {frame.shape[2]} channels")
    return np.ascontiguousarray(frame)


def to_model_input(frame: np.ndarray, size_hw: Optional[Tuple[int, int]]) -> np.ndarray:
    """Return [1, H, W, 3] u8 BGR for the model's (H, W) (None: the frame's own size, for a
    graph that resizes; a camera's u8 BGR frame is then passed on as a view, not copied)."""
    bgr = as_bgr(frame)
    if size_hw is None:
        return bgr[np.newaxis]
    h, w = size_hw
    if bgr.shape[0] != h or bgr.shape[1] != w:
        bgr = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA
                         if bgr.shape[0] > h else cv2.INTER_LINEAR)
    return bgr[np.newaxis]
