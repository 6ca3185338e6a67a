from __future__ import annotations

import numpy as np
import pytest

from edge_agent.inference import postprocess, preprocess


def test_binary_argmax_and_threshold():
    logits = np.zeros((1, 2, 3, 4), np.float32)
    logits[0, 1, 1, :] = 1.0
    mask = postprocess.to_mask(logits)
    assert mask.shape == (3, 4) and mask.dtype == np.uint8
    assert mask.sum() == 4 and mask[1].all()
    one = np.full((1, 1, 2, 2), -1.0, np.float32)
    one[0, 0, 0, 0] = 0.5
    assert postprocess.to_mask(one).tolist() == [[1, 0], [0, 0]]
    probs = np.full((1, 1, 2, 2), 0.4, np.float32)
    assert postprocess.to_mask(probs, "probabilities").sum() == 0
    assert postprocess.to_mask(probs, "logits").sum() == 4


def test_multiclass_argmax_matches_numpy():
    rng = np.random.default_rng(1)
    out = rng.standard_normal((1, 5, 8, 9)).astype(np.float32)
    assert np.array_equal(postprocess.to_mask(out), out[0].argmax(0))
    with pytest.raises(ValueError):
        postprocess.to_mask(np.zeros((4, 4)))


def test_coverage_and_num_classes():
    mask = np.array([[0, 1], [1, 1]], np.uint8)
    assert postprocess.coverage(mask, 3) == [0.25, 0.75, 0.0]
    assert postprocess.num_classes(["bg", "pet"], 1) == 2
    assert postprocess.num_classes([], 4) == 4


def test_preprocess_normalises_any_frame():
    bgr = np.zeros((10, 12, 3), np.uint8)
    assert preprocess.to_model_input(bgr, (10, 12)).shape == (1, 10, 12, 3)
    assert preprocess.to_model_input(bgr, (4, 4)).shape == (1, 4, 4, 3)
    gray = np.full((5, 5), 7, np.uint8)
    out = preprocess.as_bgr(gray)
    assert out.shape == (5, 5, 3) and (out == 7).all()
    assert preprocess.as_bgr(np.zeros((5, 5, 1), np.uint8)).shape == (5, 5, 3)
    assert preprocess.as_bgr(np.zeros((5, 5, 4), np.uint8)).shape == (5, 5, 3)
    flt = preprocess.as_bgr(np.full((2, 2, 3), 0.5, np.float32))
    assert flt.dtype == np.uint8 and flt[0, 0, 0] == 127
    for bad in (np.zeros((0, 3, 3), np.uint8), np.zeros((3, 3, 2), np.uint8),
                np.zeros((2, 2, 2, 2), np.uint8), None):
        with pytest.raises(ValueError):
            preprocess.as_bgr(bad)
