"""Per-frame figures (edge_agent.quality.figures): the rule on plain arrays."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.quality.figures import FrameFigures, checked, frame_figures, logit_bound


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_binary_logits_follow_the_probability_rule():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (1, 1, 32, 40)).astype(np.float32)
    p = _sigmoid(logits.astype(np.float64))
    top = np.maximum(p, 1 - p)
    got = frame_figures(logits, "logits", 0.9)
    assert got.uncertain == pytest.approx(np.mean(top < 0.9), abs=1e-6)
    assert got.margin == pytest.approx(np.mean(np.abs(2 * p - 1)), abs=1e-5)
    # the same scores as two logit channels (softmax over two) and as one probability
    two = np.concatenate([np.zeros_like(logits), logits], axis=1)
    assert frame_figures(two, "logits", 0.9).uncertain == pytest.approx(got.uncertain, abs=1e-6)
    probs = frame_figures(p.astype(np.float32), "probabilities", 0.9)
    assert probs.uncertain == pytest.approx(got.uncertain, abs=2e-3)
    assert probs.margin == pytest.approx(got.margin, abs=1e-5)


def test_many_classes_use_the_two_largest_of_the_softmax():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, (5, 8, 9)).astype(np.float32)
    e = np.exp(logits - logits.max(axis=0))
    p = e / e.sum(axis=0)
    s = np.sort(p, axis=0)
    got = frame_figures(logits, "logits", 0.7)
    assert got.uncertain == pytest.approx(np.mean(s[-1] < 0.7), abs=1e-6)
    assert got.margin == pytest.approx(np.mean(s[-1] - s[-2]), abs=1e-5)
    assert frame_figures(p, "probabilities", 0.7).margin == pytest.approx(got.margin, abs=1e-5)


def test_sure_and_unsure_extremes():
    assert frame_figures(np.full((1, 1, 4, 4), 50.0, np.float32)) == FrameFigures(0.0, 1.0)
    assert frame_figures(np.zeros((1, 1, 4, 4), np.float32)) == FrameFigures(1.0, 0.0)
    assert frame_figures(np.full((1, 1, 4, 4), np.inf, np.float32)) == FrameFigures(0.0, 1.0)
    flat = frame_figures(np.zeros((3, 4, 4), np.float32))
    assert flat == FrameFigures(1.0, 0.0)


@pytest.mark.parametrize("channels,kind", [(1, "logits"), (2, "logits"), (1, "probabilities"),
                                           (4, "logits"), (4, "probabilities")])
def test_nan_scores_give_no_figures(channels, kind):
    scores = np.ones((1, channels, 6, 6), np.float32) * 0.3
    scores[0, 0, 2, 3] = np.nan
    assert frame_figures(scores, kind) is None


def test_inf_in_a_softmax_gives_no_figures_never_nan():
    scores = np.zeros((1, 3, 4, 4), np.float32)
    scores[0, 1, 0, 0] = np.inf
    assert frame_figures(scores) is None


def test_checked_refuses_non_finite_and_clips():
    assert checked(float("nan"), 0.5) is None and checked(0.5, float("inf")) is None
    assert checked(-1e-9, 1.0000001) == FrameFigures(0.0, 1.0)
    assert FrameFigures(0.1234567, 0.5).to_dict() == {"uncertain": 0.123457, "margin": 0.5}


def test_bad_shapes_are_value_errors():
    for bad in (np.zeros((1, 2, 3, 4, 5), np.float32), np.zeros((0, 4, 4), np.float32),
                np.zeros(7, np.float32)):
        with pytest.raises(ValueError):
            frame_figures(bad)


def test_logit_bound_is_the_threshold_in_logit_space():
    assert logit_bound(0.9) == pytest.approx(np.log(9.0))
    assert logit_bound(0.5) == 0.0 and np.isfinite(logit_bound(1.0))
