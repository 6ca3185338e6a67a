"""Per-frame confidence figures from the model's scores: pure numpy, the reference rule.

``uncertain``: the share of pixels whose top-class probability is below ``threshold``;
``margin``: the mean over pixels of the top probability minus the second. One channel:
``p = sigmoid(l)`` (``kind`` logits) or ``p`` (probabilities, clipped to 0..1), top
``max(p, 1-p)``, margin ``|2p - 1|``; two logit channels: the same on ``l1 - l0`` (that
is softmax over two); more channels, or probabilities: the two largest of the softmax
(or of the probabilities). The graph step (``ovcompat.append_frame_quality``) computes
the same figures with the same formulas, so the two agree to rounding (a test holds
them within 1e-3).

For binary logits the rule needs no exponential per pixel: ``p_top < t`` is
``|l| < ln(t / (1 - t))`` and ``|2p - 1|`` is ``tanh(|l| / 2)``.

Scores holding NaN give no figures (``None``), and so do probabilities or softmax
logits holding an infinity (binary logits may saturate: inf is a sure pixel): a frame the
model could not score is counted, never published as a number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

DEFAULT_THRESHOLD = 0.9
KINDS = ("logits", "probabilities")


@dataclass(frozen=True)
class FrameFigures:
    uncertain: float  # share of pixels with a top-class probability below the threshold
    margin: float  # mean of (top probability - second probability) over the pixels

    def to_dict(self) -> dict:
        return {"uncertain": round(self.uncertain, 6), "margin": round(self.margin, 6)}


def logit_bound(threshold: float) -> float:
    """``ln(t / (1 - t))``: a binary logit under it in magnitude has ``p_top < t``."""
    t = min(max(float(threshold), 0.5), 1.0 - 1e-7)
    return math.log(t / (1.0 - t))


def checked(uncertain: float, margin: float) -> Optional[FrameFigures]:
    """The figures when both are finite (clipped to 0..1), else None."""
    if not (math.isfinite(uncertain) and math.isfinite(margin)):
        return None
    return FrameFigures(min(max(float(uncertain), 0.0), 1.0), min(max(float(margin), 0.0), 1.0))


def _scores(scores: np.ndarray) -> np.ndarray:
    out = np.asarray(scores)
    if out.ndim == 4:
        out = out[0]
    if out.ndim == 2:
        out = out[np.newaxis]
    if out.ndim != 3 or out.shape[0] < 1 or out[0].size == 0:
        raise ValueError(f"expected [1,C,H,W] scores, got shape {np.shape(scores)}")
    return out


def frame_figures(scores: np.ndarray, kind: str = "logits",
                  threshold: float = DEFAULT_THRESHOLD) -> Optional[FrameFigures]:
    """The figures of one frame's scores ``[1,C,H,W]`` (or ``[C,H,W]``); None when the
    scores are not finite (NaN). ValueError for a shape that is not scores."""
    out = _scores(scores)
    channels = out.shape[0]
    with np.errstate(all="ignore"):
        if kind != "probabilities" and channels <= 2:
            logit = out[0] if channels == 1 else out[1] - out[0]
            a = np.abs(logit.astype(np.float32, copy=False))
            uncertain = np.count_nonzero(a < np.float32(logit_bound(threshold))) / a.size
            margin = float(np.mean(np.tanh(a * np.float32(0.5)), dtype=np.float64))
            return checked(uncertain, margin)  # NaN scores: a NaN margin, None
        if not np.isfinite(out).all():  # probabilities and softmax: every score finite
            return None
        if channels == 1:  # one probability channel
            p = np.clip(out[0].astype(np.float32, copy=False), 0.0, 1.0)
            m = np.abs(np.float32(2.0) * p - np.float32(1.0))
            uncertain = np.count_nonzero(m < np.float32(2.0 * threshold - 1.0)) / m.size
            return checked(uncertain, float(np.mean(m, dtype=np.float64)))
        p = out.astype(np.float32, copy=False)
        if kind != "probabilities":  # softmax over the channels
            p = np.exp(p - p.max(axis=0, keepdims=True))
            p = p / p.sum(axis=0, keepdims=True)
        top2 = -np.partition(-p, 1, axis=0)[:2]
        top, second = top2[0], top2[1]
        uncertain = np.count_nonzero(top < np.float32(threshold)) / top.size
        margin = float(np.mean(top - second, dtype=np.float64))
    return checked(uncertain, margin)
