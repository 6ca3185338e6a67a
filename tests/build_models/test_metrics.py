"""Pure numpy metrics (no torch): the seed's Dice and the pet IoU."""

from __future__ import annotations

import numpy as np
import pytest

from build_models import evaluate as E


def test_micro_dice_is_torchmetrics_two_class_micro_average():
    target = np.array([[0, 1, 1, 1], [0, 0, 1, 0]])
    pred = np.array([[0, 1, 0, 1], [1, 0, 1, 0]])
    m = E.metrics(E.confusion(pred, target, 2))
    # per class tp/fp/fn: bg 3/1/1, pet 3/1/1 -> micro 2*6 / (2*6 + 2 + 2)
    assert m["dice"] == pytest.approx(12 / 16)
    assert m["dice"] == pytest.approx((pred == target).mean())  # micro over all classes
    assert m["fg_iou"] == pytest.approx(3 / 5)
    assert m["fg_dice"] == pytest.approx(6 / 8)


def test_perfect_and_empty_predictions():
    target = np.zeros((4, 4), int)
    target[1:3, 1:3] = 1
    assert E.metrics(E.confusion(target, target, 2)) == {"dice": 1.0, "fg_iou": 1.0,
                                                          "fg_dice": 1.0}
    none = E.metrics(E.confusion(np.zeros_like(target), target, 2))
    assert none["fg_iou"] == 0.0 and none["dice"] == pytest.approx(12 / 16)


def test_classes_from_logits_one_channel_and_argmax():
    one = np.array([[[[-1.0, 0.5]]]])
    assert E.classes_from_logits(one).tolist() == [[[0, 1]]]
    three = np.zeros((1, 3, 1, 2))
    three[0, 2, 0, 0] = 1.0
    three[0, 1, 0, 1] = 1.0
    assert E.classes_from_logits(three).tolist() == [[[2, 1]]]


@pytest.mark.parametrize("name,expected", [("<Type: 'float32'>", "f32"), ("bf16", "bf16"),
                                           ("<Type: 'bfloat16'>", "bf16"), ("f16", "f16")])
def test_precision_names(name, expected):  # one rule, the agent's, for build and device
    from edge_agent.inference.ovcompat import precision_name

    assert precision_name(name) == expected
