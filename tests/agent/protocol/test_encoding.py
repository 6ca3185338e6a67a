from __future__ import annotations

import numpy as np
import pytest

from edge_agent.protocol import encoding


def _masks():
    rng = np.random.default_rng(0)
    yield np.zeros((5, 7), np.uint8)
    yield np.ones((5, 7), np.uint8)
    yield (rng.random((64, 48)) > 0.5).astype(np.uint8)
    m = np.zeros((30, 40), np.uint8)
    m[5:20, 10:30] = 1
    yield m
    yield rng.integers(0, 5, (17, 23)).astype(np.uint8)
    yield np.zeros((1, 1), np.uint8)


@pytest.mark.parametrize("kind", ["png", "rle"])
def test_round_trip(kind):
    for mask in _masks():
        data = encoding.encode(mask, kind)
        back = encoding.decode(data, kind)
        assert back.dtype == np.uint8 and np.array_equal(back, mask)


def test_rle_is_coco_style_for_binary():
    mask = np.array([[1, 0], [1, 1]], np.uint8)  # column-major: 1,1,0,1
    rle = encoding.encode_rle(mask)
    assert rle["size"] == [2, 2] and "values" not in rle
    assert encoding.string_to_counts(rle["counts"]) == [0, 2, 1, 1]
    # the uncompressed COCO form (a list) decodes too
    assert np.array_equal(encoding.decode_rle({"size": [2, 2], "counts": [0, 2, 1, 1]}), mask)


def test_rle_counts_string_matches_pycocotools_algorithm():
    counts = [5, 3, 100, 2000, 1, 70000, 3]
    assert encoding.string_to_counts(encoding.counts_to_string(counts)) == counts
    # worked by hand from pycocotools' maskApi.c rleToString (deltas from i > 2, 5-bit groups)
    assert encoding.counts_to_string([0, 2, 1, 1]) == "021O"


def test_rle_multiclass_has_values():
    mask = np.array([[0, 2], [3, 3]], np.uint8)
    rle = encoding.encode_rle(mask)
    assert rle["values"] == [0, 3, 2, 3]


def test_bad_inputs():
    with pytest.raises(ValueError):
        encoding.decode_png("aGVsbG8=")
    with pytest.raises(ValueError):
        encoding.decode_rle({"size": [2, 2], "counts": [1, 1]})


def test_one_table_of_mask_encodings():
    """Codecs, config checks, the command rule, HA's select and the schemas name the
    same encodings (protocol.messages.MASK_ENCODINGS is the one list)."""
    import json

    from edge_agent.control import rules
    from edge_agent.protocol import encoding
    from edge_agent.protocol.messages import MASK_ENCODINGS
    from tests.agent.helpers import SCHEMAS

    assert tuple(encoding.CODECS) == MASK_ENCODINGS == rules.ENCODINGS
    schema = json.loads((SCHEMAS / "mask.schema.json").read_text())
    assert tuple(schema["properties"]["encoding"]["enum"]) == MASK_ENCODINGS
    with pytest.raises(encoding.MaskError, match="unknown mask encoding"):
        encoding.encode(np.zeros((2, 2), np.uint8), "jpeg")
