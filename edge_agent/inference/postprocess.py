"""Logits -> class-index mask (at model or frame resolution) and per-class coverage."""

from __future__ import annotations

from typing import List, Optional, Tuple

import cv2
import numpy as np


def to_mask(output: np.ndarray, kind: str = "logits") -> np.ndarray:
    """[1,C,H,W] or [C,H,W] -> u8 [H,W] class indices.

    One channel: class 1 where logit > 0 (or probability > 0.5); several: argmax.
    ``kind == "classes"``: already decided by the graph ([1,H,W] or [H,W] u8): a view.
    """
    if kind == "classes":
        return _classes(output)
    out = _single(output)
    if out.shape[0] == 1:
        threshold = 0.5 if kind == "probabilities" else 0.0
        return (out[0] > threshold).astype(np.uint8)
    if out.shape[0] == 2:  # cheaper than argmax for the common binary case
        return (out[1] > out[0]).astype(np.uint8)
    return np.argmax(out, axis=0).astype(np.uint8)


def _classes(output: np.ndarray) -> np.ndarray:
    out = np.asarray(output)
    if out.ndim == 3 and out.shape[0] == 1:
        out = out[0]
    if out.ndim != 2 or out.dtype != np.uint8:
        raise ValueError(f"expected a [1,H,W] u8 class map, got {out.dtype} {np.shape(output)}")
    return out


def _single(output: np.ndarray) -> np.ndarray:
    out = np.asarray(output)
    if out.ndim == 4:
        out = out[0]
    if out.ndim != 3:
        raise ValueError(f"expected [1,C,H,W] output, got shape {np.shape(output)}")
    return out


def to_frame_mask(output: np.ndarray, kind: str = "logits",
                  frame_hw: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Class mask at ``frame_hw`` (None: model resolution, exactly ``to_mask``).

    Smooth edges: the scores are upsampled bilinearly and the class decided per frame
    pixel, instead of scaling the class mask by nearest neighbour. Two channels are
    resized as one difference map (bilinear is linear, so the decision is the same).
    """
    if kind == "classes":
        mask = _classes(output)
        if frame_hw is not None and tuple(mask.shape) != tuple(frame_hw):
            raise ValueError("a class map cannot be upsampled smoothly: ask for scores")
        return mask
    out = _single(output)
    if frame_hw is None or tuple(out.shape[1:]) == tuple(frame_hw):
        return to_mask(out, kind)
    h, w = int(frame_hw[0]), int(frame_hw[1])
    if out.shape[0] == 1:
        score = cv2.resize(np.ascontiguousarray(out[0], np.float32), (w, h),
                           interpolation=cv2.INTER_LINEAR)
        return (score > (0.5 if kind == "probabilities" else 0.0)).astype(np.uint8)
    if out.shape[0] == 2:
        diff = np.ascontiguousarray(out[1] - out[0], np.float32)
        return (cv2.resize(diff, (w, h), interpolation=cv2.INTER_LINEAR) > 0).astype(np.uint8)
    hwc = np.ascontiguousarray(out.transpose(1, 2, 0), np.float32)  # cv2: up to 512 channels
    return np.argmax(cv2.resize(hwc, (w, h), interpolation=cv2.INTER_LINEAR),
                     axis=2).astype(np.uint8)


def coverage(mask: np.ndarray, num_classes: int) -> List[float]:
    if num_classes == 2:  # ~20x cheaper than bincount (which widens every pixel to int64)
        ones = np.count_nonzero(mask == 1)
        counts = [mask.size - ones - np.count_nonzero(mask > 1), ones]
    else:
        counts = np.bincount(mask.ravel(), minlength=num_classes)[:num_classes]
    total = float(mask.size) or 1.0
    return [round(float(c) / total, 6) for c in counts]


def num_classes(classes: List[str], channels: int) -> int:
    """Classes named in the manifest; a single-logit output still means two classes."""
    return max(len(classes), 2 if channels == 1 else channels)


def foreground_share(output: np.ndarray, kind: str = "logits") -> float:
    """Share of the model-resolution mask's pixels that are not class 0 (background)."""
    mask = to_mask(output, kind)
    return float(np.count_nonzero(mask)) / (mask.size or 1)
