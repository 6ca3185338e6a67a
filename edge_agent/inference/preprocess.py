"""Frame hygiene before inference, and the one resize rule frames meet on the way in.

Colour order, float conversion, layout and normalisation live inside the model
(ovcompat.add_preprocessing), so a frame costs one resize here and a view. The resize is
``model_resize``: the build trains and evaluates on it, and the graph can run the same
rule instead (inference.RESIZE_IN_GRAPH; tests compare the two), so a model meets on the
device exactly the pictures it was trained on. The rule: frames at least twice the model's size
in both dimensions are first box-averaged by the integer factor ``shrink_factor`` (so
the bilinear step never skips pixels: no aliasing on a 1080p camera), then resized
bilinearly (half-pixel centres, no antialiasing).
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


def shrink_factor(frame_hw: Tuple[int, int], size_hw: Tuple[int, int]) -> int:
    """The integer box-average factor before the bilinear step (1: none)."""
    k = int(min(frame_hw[0] / size_hw[0], frame_hw[1] / size_hw[1]))
    return k if k >= 2 else 1


def model_resize(image: np.ndarray, size_hw: Tuple[int, int]) -> np.ndarray:
    """HxWxC u8 -> the model's (h, w) by the rule above (what the graph computes, within one
    grey level); any channel order (the rule is per channel)."""
    h, w = int(size_hw[0]), int(size_hw[1])
    if image.shape[0] == h and image.shape[1] == w:
        return image
    k = shrink_factor(image.shape[:2], (h, w))
    if k == 1:
        return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    rows, cols = image.shape[0] // k, image.shape[1] // k
    # an exact integer factor: INTER_AREA is the box average (the remainder is cut, as the
    # graph's AvgPool with floor rounding does)
    pooled = cv2.resize(np.ascontiguousarray(image[:rows * k, :cols * k], np.float32),
                        (cols, rows), interpolation=cv2.INTER_AREA)
    out = cv2.resize(pooled, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(h, w, *image.shape[2:])


def to_model_input(frame: np.ndarray, size_hw: Optional[Tuple[int, int]]) -> np.ndarray:
    """Return [1, H, W, 3] u8 BGR for the model's (H, W) (None: the frame's own size, for a
    graph that resizes; a camera's u8 BGR frame is then passed on as a view, not copied)."""
    bgr = as_bgr(frame)
    if size_hw is None:
        return bgr[np.newaxis]
    return model_resize(bgr, size_hw)[np.newaxis]
