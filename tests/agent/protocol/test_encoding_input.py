"""Mask decoders and the reference subscriber on hostile input (issue 8)."""

from __future__ import annotations

import base64
import json
import struct
import time
import zlib
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from edge_agent.client.subscriber import Subscriber
from edge_agent.protocol import encoding as enc


def _png(width, height, depth=8, colour=0, body=b""):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return enc.PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(body)) \
        + chunk(b"IEND", b"")


@pytest.mark.parametrize("data, encoding", [
    ({"size": [1, 1], "counts": [3000000000]}, "rle"),
    ({"size": [1, 1], "counts": [-1, 2]}, "rle"),
    ({"size": [1, 1], "counts": [1], "values": [300]}, "rle"),
    ({"size": [1, 1], "counts": [1], "values": [1, 2]}, "rle"),
    ({"size": [2, 2], "counts": "o" * 50}, "rle"),
    ({"size": [100000, 100000], "counts": "0"}, "rle"),
    ({"size": [True, 1], "counts": "1"}, "rle"),
    ({"size": [1, 1], "counts": ["1"]}, "rle"),
    ({"size": [1, 1], "counts": [10 ** 30]}, "rle"),
    ({"size": [1, 1], "counts": "\u00e9"}, "rle"),
    ({"size": [1]}, "rle"),
    ({"counts": "1"}, "rle"),
    ([1, 2], "rle"),
    (None, "png"),
    (5, "png"),
    ("!!!!", "png"),
    (base64.b64encode(b"GIF89a").decode(), "png"),
    (base64.b64encode(_png(20000, 20000, 16)).decode(), "png"),
    (base64.b64encode(_png(20000, 20000, 8)).decode(), "png"),
    (base64.b64encode(_png(4, 4, 8, 2)).decode(), "png"),
    (base64.b64encode(_png(4, 4, 8, 0, b"\0\0")).decode(), "png"),
    ("", "png"),
    ("x", "jpeg"),
    ("x", None),
])
def test_bad_masks_raise_only_mask_error(data, encoding):
    with pytest.raises(enc.MaskError):
        enc.decode(data, encoding)


def test_mask_error_is_a_value_error():
    assert issubclass(enc.MaskError, ValueError)


def test_a_1mb_rle_string_decodes_in_linear_time():
    text = enc.counts_to_string([3, 5] * 150_000)  # >= 1 MB of counts
    assert len(text) >= 300_000
    big = "1" * (1 << 20)
    for counts in (text, big, "o" * (1 << 20)):
        t0 = time.perf_counter()
        with pytest.raises(enc.MaskError):
            enc.decode({"size": [1000, 1000], "counts": counts}, "rle")
        assert time.perf_counter() - t0 < 5.0  # was 17.8 s; measured ~0.1 s here


def test_round_trips_still_work():
    rng = np.random.default_rng(1)
    for _ in range(50):
        mask = (rng.random((13, 17)) * 3).astype(np.uint8)
        assert (enc.decode(enc.encode(mask, "rle"), "rle") == mask).all()
        assert (enc.decode(enc.encode(mask, "png"), "png") == mask).all()
        binary = (mask > 1).astype(np.uint8)
        assert (enc.decode(enc.encode(binary, "rle"), "rle") == binary).all()
    counts = [5, 100000, 3, 1, 70000, 2, 40000000]
    assert enc.string_to_counts(enc.counts_to_string(counts)) == counts


def test_encode_png_of_an_empty_mask_is_a_mask_error():
    with pytest.raises(enc.MaskError, match="non-empty 2-D"):
        enc.encode_png(np.zeros((0, 4), np.uint8))
    with pytest.raises(enc.MaskError):
        enc.encode_png(np.zeros((2, 2, 2), np.uint8))


def test_header_sizes():
    ok, jpg = cv2.imencode(".jpg", np.zeros((30, 40, 3), np.uint8))
    assert enc.image_size(jpg.tobytes()) == (40, 30)
    assert enc.image_size(_png(12000, 12000)) == (12000, 12000)
    with pytest.raises(enc.MaskError):
        enc.image_size(b"\xff\xd8\xff")


# ---- the reference subscriber -----------------------------------------------------------

def _msg(kind, payload, device="d"):
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return SimpleNamespace(topic=f"segedge/{device}/{kind}", payload=raw)


def _good_mask(fid=1):
    mask = np.zeros((4, 6), np.uint8)
    mask[1:3, 2:4] = 1
    return {"frame_id": fid, "width": 6, "height": 4, "encoding": "rle",
            "mask": enc.encode_rle(mask)}


def _rss_mb():
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_subscriber_survives_hostile_messages_with_bounded_memory(tmp_path):
    sub = Subscriber("127.0.0.1", 1, out=str(tmp_path), quiet=True)
    big_png = base64.b64encode(_png(12000, 12000, 8, 2)).decode()
    before = _rss_mb()
    hostile = [
        _msg("mask", {"frame_id": 1, "width": 1, "height": 1, "encoding": "rle",
                      "mask": {"size": [1, 1], "counts": [3000000000]}}),
        _msg("mask", {"frame_id": 1, "width": 20000, "height": 20000, "encoding": "rle",
                      "mask": {"size": [20000, 20000], "counts": [400000000]}}),
        _msg("mask", {"frame_id": 1, "width": 4, "height": 4, "encoding": "rle",
                      "mask": {"size": [4, 4], "counts": "o" * (1 << 20)}}),
        _msg("mask", {"frame_id": "x", "width": 4, "height": 4, "encoding": "rle",
                      "mask": {"size": [4, 4], "counts": [16]}}),
        _msg("mask", b"[" * 100_000),
        _msg("status", b"x" * (17 << 20)),
    ] + [_msg("frame", {"frame_id": i, "image": big_png}) for i in range(6)]
    for message in hostile:
        sub._on_message(None, None, message)
    assert _rss_mb() - before < 300  # was +2.5 GB for the frames, +5.1 GB for the RLE
    sub._on_message(None, None, _msg("mask", _good_mask(7)))
    sub._on_message(None, None, _msg("status", {"state": "online"}))
    view = sub.views["d"]
    assert view.masks == 1 and view.last_frame == 7 and view.status["state"] == "online"
    assert view.frames == {}
    assert sub.bad_messages + view.bad >= len(hostile)


def test_subscriber_keeps_a_bounded_set_of_frames(tmp_path, monkeypatch):
    from edge_agent.client import subscriber as sm

    monkeypatch.setattr(sm, "FRAME_BUDGET_BYTES", 3 * 40 * 30 * 3)
    sub = Subscriber("127.0.0.1", 1, out=str(tmp_path), quiet=True)
    ok, jpg = cv2.imencode(".jpg", np.zeros((30, 40, 3), np.uint8))
    image = base64.b64encode(jpg.tobytes()).decode()
    for device in ("a", "b"):
        for fid in range(1, 11):
            sub._on_message(None, None, _msg("frame", {"frame_id": fid, "image": image}, device))
    kept = {d: sorted(v.frames) for d, v in sub.views.items()}
    assert sum(len(v) for v in kept.values()) == 3 and kept["b"] == [8, 9, 10]
    assert sub._frame_bytes == 3 * 40 * 30 * 3


def test_subscriber_follows_a_bounded_number_of_devices(monkeypatch):
    from edge_agent.client import subscriber as sm

    monkeypatch.setattr(sm, "MAX_DEVICES", 3)
    sub = Subscriber("127.0.0.1", 1, quiet=True)
    for i in range(10):
        sub._on_message(None, None, _msg("status", {"state": "online"}, f"cam{i}"))
    assert len(sub.views) == 3 and sub.bad_messages == 7


def test_subscriber_prints_no_escape_sequences(capsys):
    sub = Subscriber("127.0.0.1", 1)
    sub._on_message(None, None, _msg("status", {"state": "\x1b[2J\x1b]0;owned\x07online",
                                                "reason": "a\nb"}))
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and out.count("\n") == 1


def test_found_by_fuzzing_a_newline_in_a_size_stays_on_one_line():
    with pytest.raises(enc.MaskError) as err:
        enc.decode({"size": "\n", "counts": ""}, "rle")
    assert "\n" not in str(err.value)


def test_subscriber_ignores_the_overlay_stream_and_settings(tmp_path):
    """The agent's JPEG overlay topic and retained settings share `<prefix>/<id>/+`."""
    sub = Subscriber("127.0.0.1", 1, out=str(tmp_path), quiet=True)
    sub._on_message(None, None, _msg("overlay", b"\xff\xd8\xff\xe0 not json"))
    sub._on_message(None, None, _msg("settings", {"paused": True}))
    assert sub.bad_messages == 0 and not sub.views
