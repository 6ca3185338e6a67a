"""The rolling window of one camera's figures, the drift score against the bundle's
reference, and the drift state machine with hysteresis. Pure numpy and stdlib.

Statistic (``quantile``): the window's mean ``uncertain`` share (the share of unsure
pixels over all its frames) placed in the reference's per-image distribution of the same
figure (val and test splits pooled): the fraction of reference images less sure than
the window, in 0..1. A camera whose model is as sure as on its validation data scores
around 0.5-0.6; a window as unsure as the reference's hardest 30 % scores above 0.70.
It is one-sided on purpose: drift means the model is unsure of what it sees, not that the
scene is unlike the reference. PSI against quantile bins of the reference, tried first,
alarms on the demo clip itself (one camera's scenes never spread like a data set's
images) and does not separate fog from it (docs/quality.md, scripts/drift_probe.py).

States: ``no_reference`` (the bundle has none: the window is still reported),
``warming_up`` (fewer than ``min_frames`` frames in the window, unless they span half of
it: a slow camera), ``ok`` and ``drifting``.
``ok`` -> ``drifting`` once the score has stayed at or above ``enter`` for
``enter_after_s``; back to ``ok`` once it has stayed at or below ``exit`` for
``exit_after_s``. ``step`` is pure (state in, state out); ``QualityMonitor`` holds one
camera's window (fed by the publish thread) and state (evaluated by the main thread).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from edge_agent.quality.figures import FrameFigures

STATES = ("warming_up", "ok", "drifting", "no_reference")
STATISTIC = "quantile"


@dataclass(frozen=True)
class DriftSettings:
    """The ``[quality]`` keys the window and the state machine use (seconds: monotonic)."""

    window_s: float = 20.0
    window_frames: int = 1000
    min_frames: int = 60
    enter: float = 0.70
    exit: float = 0.6
    enter_after_s: float = 5.0
    exit_after_s: float = 10.0


@dataclass(frozen=True)
class DriftState:
    state: str = "warming_up"
    since: float = 0.0  # when it became this state (the caller's clock)
    above_since: Optional[float] = None  # score >= enter since (None: it is not)
    below_since: Optional[float] = None  # score <= exit since


def ready(frames: int, seconds: float, settings: DriftSettings) -> bool:
    """Enough frames to judge: ``min_frames``, or (a slow camera) frames over half the
    window's length."""
    return frames >= settings.min_frames or (frames >= 2 and
                                             seconds >= settings.window_s / 2.0)


def step(prev: DriftState, score: Optional[float], frames: int, now: float,
         settings: DriftSettings, has_reference: bool = True,
         seconds: float = 0.0) -> DriftState:
    """The next state from the previous one and the window (its score, frame count and
    the seconds it spans) at ``now``."""
    def become(state: str, **kw: Any) -> DriftState:
        since = prev.since if state == prev.state else now
        return DriftState(state, since, **kw)

    if not has_reference:
        return become("no_reference")
    if score is None or not ready(frames, seconds, settings):
        return become("warming_up")
    above = (prev.above_since if prev.above_since is not None else now) \
        if score >= settings.enter else None
    below = (prev.below_since if prev.below_since is not None else now) \
        if score <= settings.exit else None
    held_above = above is not None and now - above >= settings.enter_after_s
    held_below = below is not None and now - below >= settings.exit_after_s
    if prev.state == "drifting":
        state = "ok" if held_below else "drifting"
    elif prev.state == "ok":
        state = "drifting" if held_above else "ok"
    else:  # leaving the warm-up: ok, or drifting once the dwell is over
        state = "ok" if above is None else "drifting" if held_above else "warming_up"
    return become(state, above_since=above, below_since=below)


def quantile_score(value: float, reference: np.ndarray) -> float:
    """Where ``value`` sits in the sorted ``reference``: the share of it below, ties
    counted half (0..1)."""
    n = len(reference)
    if n == 0:
        return float("nan")
    lo = int(np.searchsorted(reference, value, side="left"))
    hi = int(np.searchsorted(reference, value, side="right"))
    return (lo + 0.5 * (hi - lo)) / n


def _r(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(float(value), 6)


def summary(uncertain: np.ndarray, margin: np.ndarray, coverage: np.ndarray
            ) -> Dict[str, Optional[float]]:
    """Mean, p50 and p90 of ``uncertain``; means of ``margin`` and ``coverage`` (None
    when empty), rounded to 6 decimals."""
    if not len(uncertain):
        return {"uncertain_mean": None, "uncertain_p50": None, "uncertain_p90": None,
                "margin_mean": None, "coverage_mean": None}
    p50, p90 = np.percentile(uncertain, (50, 90))
    return {"uncertain_mean": _r(uncertain.mean()), "uncertain_p50": _r(p50),
            "uncertain_p90": _r(p90), "margin_mean": _r(margin.mean()),
            "coverage_mean": _r(coverage.mean()) if len(coverage) else None}


@dataclass(frozen=True)
class Reference:
    """The manifest's ``reference``, ready for scoring: the pooled, sorted ``uncertain``
    figures of its splits and the summary the quality message repeats."""

    threshold: float
    uncertain: np.ndarray = field(repr=False)  # sorted
    info: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, data: Optional[Mapping[str, Any]]) -> Optional[Reference]:
        """From the checked manifest's ``reference`` (None: the bundle has none)."""
        if not data:
            return None
        splits = data.get("splits") or {}
        names = [s for s in ("val", "test") if s in splits] + \
            sorted(s for s in splits if s not in ("val", "test"))
        pooled = {k: np.asarray([x for s in names for x in splits[s].get(k, [])], np.float64)
                  for k in ("uncertain", "margin", "coverage")}
        if not len(pooled["uncertain"]):
            return None
        info = {"split": "+".join(names), "frames": int(len(pooled["uncertain"])),
                **summary(pooled["uncertain"], pooled["margin"], pooled["coverage"])}
        return cls(float(data["threshold"]), np.sort(pooled["uncertain"]), info)

    def score(self, uncertain_mean: float) -> float:
        return quantile_score(uncertain_mean, self.uncertain)


def figures_threshold(reference: Optional[Reference], configured: float) -> float:
    """The threshold a model's figures are computed at: its reference's (the window is
    compared with the reference, so they must be alike), else the configured one."""
    return reference.threshold if reference is not None else configured


class QualityMonitor:
    """One camera's window (``add``: the publish thread) and drift state (``evaluate``:
    the main thread). Bounded: at most ``window_frames`` frames, none older than
    ``window_s``."""

    def __init__(self, settings: DriftSettings, reference: Optional[Reference],
                 clock: Any = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._lock = threading.Lock()
        self._frames: Deque[Tuple[float, float, float, float]] = deque(
            maxlen=max(1, int(settings.window_frames)))
        self.unscored = 0  # frames whose figures were not finite (since start)
        self._reference = reference
        self._state = DriftState(since=clock())
        self.score: Optional[float] = None
        self.window: Dict[str, Any] = {"frames": 0, "seconds": 0.0, **summary(
            np.empty(0), np.empty(0), np.empty(0))}

    @property
    def reference(self) -> Optional[Reference]:
        return self._reference

    def set_reference(self, reference: Optional[Reference]) -> None:
        """A new model (reload): its reference; the window starts again (new figures)."""
        with self._lock:
            self._reference = reference
            self._frames.clear()
            self._state = DriftState(since=self.clock())

    def add(self, figures: Optional[FrameFigures], coverage: float,
            now: Optional[float] = None) -> None:
        if figures is None:
            with self._lock:
                self.unscored += 1
            return
        t = self.clock() if now is None else now
        with self._lock:
            self._frames.append((t, figures.uncertain, figures.margin, coverage))

    def _window(self, now: float) -> np.ndarray:
        horizon = now - self.settings.window_s
        while self._frames and self._frames[0][0] < horizon:
            self._frames.popleft()
        return np.asarray(self._frames, np.float64).reshape(-1, 4)

    def evaluate(self, now: Optional[float] = None) -> bool:
        """Recompute the window, score and state; True when the state changed."""
        now = self.clock() if now is None else now
        with self._lock:
            rows = self._window(now)
            reference, prev = self._reference, self._state
        seconds = float(rows[-1, 0] - rows[0, 0]) if len(rows) > 1 else 0.0
        self.window = {"frames": int(len(rows)), "seconds": round(seconds, 3),
                       **summary(rows[:, 1], rows[:, 2], rows[:, 3])}
        mean = self.window["uncertain_mean"]
        self.score = reference.score(mean) if reference is not None and mean is not None \
            else None
        state = step(prev, self.score, len(rows), now, self.settings, reference is not None,
                     seconds)
        with self._lock:
            if self._reference is reference:  # not replaced meanwhile
                self._state = state
        return state.state != prev.state

    @property
    def state(self) -> DriftState:
        return self._state

    def stats(self) -> Dict[str, Any]:
        """A camera's stats ``quality``: state, the window's figures, the drift score."""
        return {"state": self._state.state, **self.window, "unscored": self.unscored,
                "drift_score": _r(self.score)}

    def health(self) -> Dict[str, Any]:
        """The health file's entry for this camera (the deploy's canary reads it)."""
        w = self.window
        return {"state": self._state.state, "uncertain_mean": w["uncertain_mean"],
                "margin_mean": w["margin_mean"], "drift_score": _r(self.score),
                "frames": w["frames"]}

    def report(self, now_mono: Optional[float] = None, now_wall: Optional[float] = None
               ) -> Dict[str, Any]:
        """The quality message's body: state, since (Unix seconds), window, reference,
        drift (from the last ``evaluate``)."""
        now_mono = self.clock() if now_mono is None else now_mono
        now_wall = time.time() if now_wall is None else now_wall
        state, reference, s = self._state, self._reference, self.settings
        return {"state": state.state,
                "since": round(now_wall - max(0.0, now_mono - state.since), 3),
                "window": {**self.window, "unscored": self.unscored},
                "reference": None if reference is None else
                {**reference.info, "threshold": reference.threshold},
                "drift": None if reference is None else
                {"statistic": STATISTIC, "score": _r(self.score), "enter": s.enter,
                 "exit": s.exit}}


def simulate(uncertain: Sequence[float], fps: float, settings: DriftSettings,
             reference: Optional[Reference], start: float = 0.0,
             every_s: float = 1.0) -> List[Tuple[float, str, Optional[float]]]:
    """Feed per-frame ``uncertain`` figures at ``fps`` (synthetic clock), evaluating every
    ``every_s`` as the agent does; returns (time, state, score) after each evaluation."""
    clock = [start]
    monitor = QualityMonitor(settings, reference, clock=lambda: clock[0])
    out: List[Tuple[float, str, Optional[float]]] = []
    next_eval = start + every_s
    for i, u in enumerate(uncertain):
        t = start + i / fps
        clock[0] = t
        monitor.add(FrameFigures(float(u), 1.0 - float(u)), 0.0, t)
        if t >= next_eval:
            next_eval += every_s
            monitor.evaluate(t)
            out.append((t, monitor.state.state, monitor.score))
    return out
