"""Logits -> class-index mask and per-class coverage."""

from __future__ import annotations

from typing import List, Optional, Tuple

import cv2
import numpy as np


def to_mask(output: np.ndarray, kind: str = "logits") -> np.ndarray:
    """[1,C,H,W] or [C,H,W] -> u8 [H,W] class indices.

    One channel: class 1 where logit > 0 (or probability > 0.5); several: argmax.
    """
    out = np.asarray(output)
    if out.ndim == 4:
        out = out[0]
    if out.ndim != 3:
        raise ValueError(f"expected [1,C,H,W] output, got shape {np.shape(output)}")
    if out.shape[0] == 1:
        threshold = 0.5 if kind == "probabilities" else 0.0
        return (out[0] > threshold).astype(np.uint8)
    if out.shape[0] == 2:  # cheaper than argmax for the common binary case
        return (out[1] > out[0]).astype(np.uint8)
    return np.argmax(out, axis=0).astype(np.uint8)


def resize_mask(mask: np.ndarray, size_hw: Optional[Tuple[int, int]]) -> np.ndarray:
    if size_hw is None or tuple(mask.shape[:2]) == tuple(size_hw):
        return mask
    h, w = size_hw
    return cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)


def coverage(mask: np.ndarray, num_classes: int) -> List[float]:
    counts = np.bincount(mask.ravel(), minlength=num_classes)[:num_classes]
    total = float(mask.size) or 1.0
    return [round(float(c) / total, 6) for c in counts]


def num_classes(classes: List[str], channels: int) -> int:
    """Classes named in the manifest; a single-logit output still means two classes."""
    return max(len(classes), 2 if channels == 1 else channels)
