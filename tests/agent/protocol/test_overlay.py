"""Frame-resolution masks from bilinear logits; overlays; palette mask PNGs."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from edge_agent.inference import postprocess
from edge_agent.protocol import overlay


def disc_logits(size: int, radius: float, centre: float) -> np.ndarray:
    """[1,1,size,size] logits: positive inside a disc (signed distance to its edge)."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    return (radius - np.hypot(xx - centre, yy - centre)).astype(np.float32)[None, None]


def test_model_resolution_is_to_mask_unchanged():
    rng = np.random.default_rng(0)
    for channels in (1, 2, 5):
        out = rng.standard_normal((1, channels, 8, 10)).astype(np.float32)
        assert np.array_equal(postprocess.to_frame_mask(out, "logits", None),
                              postprocess.to_mask(out))
        assert np.array_equal(postprocess.to_frame_mask(out, "logits", (8, 10)),
                              postprocess.to_mask(out))


def test_frame_mask_has_smooth_edges():
    """A disc at 16x16 scaled 10x: bilinear logits follow the true circle, nearest does not."""
    small = disc_logits(16, 5.3, 8.0)
    truth = disc_logits(160, 53.0, 80.0)[0, 0] > 0
    smooth = postprocess.to_frame_mask(small, "logits", (160, 160))
    blocky = cv2.resize(postprocess.to_mask(small), (160, 160), interpolation=cv2.INTER_NEAREST)
    assert smooth.shape == (160, 160) and smooth.dtype == np.uint8
    wrong_smooth = int((smooth.astype(bool) != truth).sum())
    wrong_blocky = int((blocky.astype(bool) != truth).sum())
    assert wrong_smooth * 3 < wrong_blocky, (wrong_smooth, wrong_blocky)


def test_two_and_many_channels_decide_after_upsampling():
    rng = np.random.default_rng(2)
    for channels in (2, 6):
        out = rng.standard_normal((1, channels, 6, 7)).astype(np.float32)
        got = postprocess.to_frame_mask(out, "logits", (30, 21))
        planes = np.stack([cv2.resize(c, (21, 30), interpolation=cv2.INTER_LINEAR)
                           for c in out[0]])
        want = planes.argmax(0)
        assert got.shape == (30, 21)
        assert (got == want).mean() > 0.999  # float rounding at exact ties only


def test_probabilities_threshold_at_half():
    probs = np.full((1, 1, 4, 4), 0.4, np.float32)
    assert postprocess.to_frame_mask(probs, "probabilities", (8, 8)).sum() == 0
    assert postprocess.to_frame_mask(probs, "logits", (8, 8)).sum() == 64
    with pytest.raises(ValueError):
        postprocess.to_frame_mask(np.zeros((4, 4)), "logits", (8, 8))


def test_palette_png_keeps_classes_and_shows_colours():
    mask = np.zeros((5, 7), np.uint8)
    mask[1:4, 2:6] = 1
    mask[0, 0] = 2
    with Image.open(io.BytesIO(overlay.palette_png(mask))) as png:
        assert png.mode == "P" and png.size == (7, 5)
        assert np.array_equal(np.asarray(png), mask)
        rgb = np.asarray(png.convert("RGB"))
    assert tuple(rgb[2, 3]) == tuple(overlay.PALETTE_RGB[1])
    assert tuple(rgb[4, 6]) == (0, 0, 0)
    for bad in (np.zeros((0, 3), np.uint8), np.zeros((2, 2), np.int32), np.zeros((2, 2, 3))):
        with pytest.raises(ValueError):
            overlay.palette_png(bad)


def test_overlay_tints_outlines_and_labels():
    frame = np.full((120, 160, 3), (40, 120, 200), np.uint8)  # a ginger-ish BGR
    mask = np.zeros((120, 160), np.uint8)
    mask[40:100, 50:120] = 1
    label = overlay.Caption("cam-1", 42, 12.3, [("pet", 0.35)])
    assert label.text() == "cam-1  frame 42  latency 12.3 ms  pet 35.0%"
    out = overlay.draw(mask, frame, ["background", "pet"], label)
    assert out.shape == frame.shape and out.dtype == np.uint8
    inside = out[70, 85].astype(int)
    assert not np.array_equal(inside, frame[70, 85]) and inside[2] > frame[70, 85, 2] - 1
    edge = out[38:43, 85]  # across the top border: a dark and a light ring
    assert edge.min() < 60 and edge.max() > 200
    assert np.array_equal(out[60, 140], frame[60, 140])  # background untouched
    assert not np.array_equal(out[12:20, 12:20], frame[12:20, 12:20])  # legend
    assert not np.array_equal(out[-8:, :100], frame[-8:, :100])  # caption band


def test_overlay_upsamples_model_masks_and_has_a_canvas():
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 1
    out = overlay.draw(mask, np.zeros((160, 160, 3), np.uint8), ["background", "pet"])
    assert out.shape == (160, 160, 3)
    canvas = overlay.draw(mask, None, ["background", "pet"])
    assert canvas.shape == (16, 16, 3)
    up = overlay.upsample_labels(mask, (160, 160))
    assert up.shape == (160, 160) and set(np.unique(up)) == {0, 1}
    assert overlay.upsample_labels(np.ones((4, 4), np.uint8), (8, 8)).min() == 1
    assert overlay.coverage_pairs(["background", "pet"], {"pet": 0.5, "background": 0.5}) == \
        [("pet", 0.5)]
    assert overlay.coverage_pairs(["background", "pet"], None) == []
