"""The drift statistic, window and state machine (edge_agent.quality.drift): arrays in,
states out, on a synthetic clock."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.quality.drift import (
    DriftSettings,
    DriftState,
    QualityMonitor,
    Reference,
    quantile_score,
    simulate,
    step,
)
from edge_agent.quality.figures import FrameFigures

S = DriftSettings(window_s=20.0, window_frames=1000, min_frames=60, enter=0.75, exit=0.65,
                  enter_after_s=5.0, exit_after_s=10.0)
RNG = np.random.default_rng(20)
REF_VALUES = np.clip(RNG.gamma(4.0, 0.045, 300), 0, 1)  # a skewed, data-set-like spread


def _reference() -> Reference:
    half = len(REF_VALUES) // 2
    split = lambda v: {"uncertain": list(v), "margin": list(1 - v), "coverage": [0.4] * len(v)}  # noqa: E731
    return Reference.from_manifest({"statistic": "uncertain", "threshold": 0.9, "splits": {
        "val": split(REF_VALUES[:half]), "test": split(REF_VALUES[half:])}})


def _states(values, fps=12.0, settings=S, reference="default"):
    ref = _reference() if reference == "default" else reference
    return simulate(values, fps, settings, ref)


def _first(trace, state, after=0.0):
    return next((t for t, s, _ in trace if t >= after and s == state), None)


def test_quantile_score_is_the_share_below_ties_counted_half():
    ref = np.array([0.1, 0.2, 0.2, 0.3])
    assert quantile_score(0.05, ref) == 0.0 and quantile_score(0.5, ref) == 1.0
    assert quantile_score(0.2, ref) == pytest.approx(0.5)
    assert quantile_score(0.25, ref) == pytest.approx(0.75)
    assert np.isnan(quantile_score(0.1, np.empty(0)))


def test_step_warms_up_then_decides_with_dwell_and_hysteresis():
    st = DriftState(since=0.0)
    st = step(st, 0.9, frames=10, now=1.0, settings=S)
    assert st.state == "warming_up"  # too few frames: no verdict
    st = step(st, 0.5, frames=60, now=2.0, settings=S)
    assert st.state == "ok" and st.since == 2.0
    st = step(st, 0.8, 100, 3.0, S)
    assert st.state == "ok" and st.above_since == 3.0
    st = step(st, 0.8, 100, 7.9, S)
    assert st.state == "ok"  # not yet held enter_after_s
    st = step(st, 0.8, 100, 8.0, S)
    assert st.state == "drifting" and st.since == 8.0
    st = step(st, 0.7, 100, 9.0, S)  # between exit and enter: stays
    assert st.state == "drifting"
    st = step(st, 0.6, 100, 10.0, S)
    st = step(st, 0.7, 100, 15.0, S)  # back above exit: the exit dwell starts again
    st = step(st, 0.6, 100, 16.0, S)
    assert st.state == "drifting" and st.below_since == 16.0
    st = step(st, 0.6, 100, 26.0, S)
    assert st.state == "ok" and st.since == 26.0


def test_a_short_spike_does_not_drift():
    st = step(DriftState(since=0.0), 0.5, 100, 1.0, S)
    for t, score in ((2.0, 0.9), (4.0, 0.9), (6.0, 0.5), (7.0, 0.9), (11.0, 0.9)):
        st = step(st, score, 100, t, S)
        assert st.state == "ok", t
    assert step(st, 0.9, 100, 12.0, S).state == "drifting"


def test_no_reference_and_warming_up_after_the_frames_stop():
    st = step(DriftState(since=0.0), 0.9, 100, 1.0, S, has_reference=False)
    assert st.state == "no_reference"
    assert step(st, 0.9, 100, 2.0, S, has_reference=False).since == 1.0
    ok = step(DriftState(since=0.0), 0.5, 100, 1.0, S)
    assert step(ok, None, 0, 2.0, S).state == "warming_up"


def test_a_slow_camera_warms_up_by_time():
    assert step(DriftState(), 0.5, 20, 1.0, S, seconds=9.0).state == "warming_up"
    assert step(DriftState(), 0.5, 20, 1.0, S, seconds=10.0).state == "ok"


def test_frames_like_the_reference_stay_ok_for_30_minutes():
    values = RNG.choice(REF_VALUES, size=12 * 1800)
    trace = _states(values)
    assert _first(trace, "ok") is not None and _first(trace, "ok") <= 10.0
    assert _first(trace, "drifting") is None


def test_a_less_sure_picture_drifts_and_recovers_in_time():
    normal = RNG.choice(REF_VALUES, size=12 * 60)
    unsure = RNG.choice(np.sort(REF_VALUES)[-len(REF_VALUES) // 5:], size=12 * 120)
    trace = _states(np.concatenate([normal, unsure, normal, normal]))
    drifted = _first(trace, "drifting", after=60.0)
    assert drifted is not None and drifted - 60.0 <= 30.0
    back = _first(trace, "ok", after=180.0)
    assert back is not None and back - 180.0 <= 60.0
    assert _first(trace, "drifting") >= 60.0  # never before the change


def test_a_surer_picture_is_not_drift():
    """One-sided: a model that is more sure than on its reference is fine."""
    sure = RNG.choice(np.sort(REF_VALUES)[:len(REF_VALUES) // 5], size=12 * 300)
    assert _first(_states(sure), "drifting") is None


def test_without_a_reference_the_state_is_no_reference_but_the_window_is_kept():
    trace = _states(RNG.choice(REF_VALUES, size=12 * 30), reference=None)
    assert {s for _, s, _ in trace} == {"no_reference"} and trace[-1][2] is None


def test_the_window_is_bounded_by_time_and_count():
    clock = [0.0]
    monitor = QualityMonitor(DriftSettings(window_s=10.0, window_frames=50), _reference(),
                             clock=lambda: clock[0])
    for i in range(200):
        clock[0] = i * 0.1
        monitor.add(FrameFigures(0.1, 0.9), 0.3)
    monitor.evaluate()
    assert monitor.window["frames"] == 50  # the count bound (20 s of frames at 10 fps)
    clock[0] = 100.0
    monitor.add(FrameFigures(0.2, 0.8), 0.3)
    monitor.evaluate()
    assert monitor.window["frames"] == 1  # the rest aged out
    monitor.add(None, 0.0)
    assert monitor.stats()["unscored"] == 1


def test_report_and_stats_carry_finite_rounded_figures():
    clock = [0.0]
    monitor = QualityMonitor(S, _reference(), clock=lambda: clock[0])
    for i in range(100):
        clock[0] = i / 12.0
        monitor.add(FrameFigures(0.123456789, 0.87654321), 0.25)
    assert monitor.evaluate()  # warming_up -> ok
    body = monitor.report(now_mono=clock[0], now_wall=1000.0)
    assert body["state"] == "ok" and body["window"]["uncertain_mean"] == 0.123457
    assert body["drift"]["statistic"] == "quantile" and 0 <= body["drift"]["score"] <= 1
    assert body["reference"]["split"] == "val+test" and body["reference"]["threshold"] == 0.9
    assert body["since"] <= 1000.0
    assert monitor.stats()["state"] == "ok" and monitor.health()["frames"] == 100
    monitor.set_reference(None)  # a reload to a bundle without one
    monitor.evaluate()
    assert monitor.state.state == "no_reference" and monitor.window["frames"] == 0
