"""Data layer: label mapping, resizing, splits and every bad-data message (no torch)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from build_models import data as D


def test_map_trimap_binary_and_trimap():
    trimap = np.array([[1, 2], [3, 2]], np.uint8)
    assert D.map_trimap(trimap, "binary").tolist() == [[1, 0], [1, 0]]
    assert D.map_trimap(trimap, "trimap").tolist() == [[1, 0], [2, 0]]


def test_map_trimap_rejects_values_outside_1_2_3():
    with pytest.raises(D.DataError, match=r"outside \{1,2,3\}: \[0, 7\]"):
        D.map_trimap(np.array([[0, 1], [7, 2]], np.uint8))
    with pytest.raises(ValueError, match="valid: binary, trimap"):
        D.map_trimap(np.ones((2, 2), np.uint8), "rgb")


def test_resize_pair_bilinear_image_nearest_mask():
    from edge_agent.inference.preprocess import model_resize

    image = np.zeros((40, 50, 3), np.uint8)
    image[:, 26:] = 200
    mask = np.zeros((40, 50), np.uint8)
    mask[:, 26:] = 1
    img, m = D.resize_pair(image, mask, 32)
    assert img.shape == (32, 32, 3) and m.shape == (32, 32)
    assert set(np.unique(m)) == {0, 1}  # nearest: no new labels
    assert len(np.unique(img[0])) > 2  # bilinear: a blended edge
    assert np.array_equal(img, model_resize(image, (32, 32)))  # the device's own rule


@pytest.mark.parametrize("size", [0, 50, 100])
def test_size_must_be_multiple_of_32(size):
    with pytest.raises(ValueError, match="multiple of 32"):
        D.check_size(size)


def test_validation_split_is_every_10th_trainval_line(pets_dir):
    names = D.read_split(pets_dir, "trainval")
    assert D.read_split(pets_dir, "val") == names[::10]
    assert len(D.read_split(pets_dir, "train")) == len(names) - len(names[::10])
    assert len(D.read_split(pets_dir, "test")) == 6


def test_scan_clean_dataset(pets_dir):
    result = D.scan_split(pets_dir, "trainval")
    assert len(result.pairs) == 20 and result.problems == []
    data = D.PetData(result.pairs, 64)
    images, masks = next(data.batches(4))
    assert images.shape == (4, 3, 64, 64) and images.dtype == np.float32
    assert masks.shape == (4, 64, 64) and set(np.unique(masks)) <= {0, 1}
    assert images.max() > 1.0  # raw 0..255, normalisation is inside the model


def _first(root, split="trainval"):
    return D.read_split(root, split)[0]


def _break_png_as_jpg(root, name):
    Image.new("RGB", (80, 64)).save(root / "images" / f"{name}.jpg", format="PNG")
    return "not JPEG"


def _break_unreadable(root, name):
    (root / "images" / f"{name}.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    return "unreadable image"


def _break_trimap_values(root, name):
    path = root / "annotations" / "trimaps" / f"{name}.png"
    trimap = np.array(Image.open(path))
    trimap[0, 0] = 4
    Image.fromarray(trimap).save(path)
    return r"outside \{1,2,3\}"


def _break_size(root, name):
    path = root / "annotations" / "trimaps" / f"{name}.png"
    Image.fromarray(np.full((10, 12), 2, np.uint8)).save(path)
    return "but trimap"


def _break_missing(root, name):
    (root / "images" / f"{name}.jpg").unlink()
    return "names a missing file"


BREAKERS = {"non-jpeg": _break_png_as_jpg, "unreadable": _break_unreadable,
            "trimap-values": _break_trimap_values, "size-mismatch": _break_size,
            "missing-file": _break_missing}


@pytest.mark.parametrize("case", sorted(BREAKERS))
def test_bad_data_is_skipped_and_counted_or_fatal_with_strict(pets_copy, case):
    name = _first(pets_copy)
    message = BREAKERS[case](pets_copy, name)
    result = D.scan_split(pets_copy, "trainval")
    assert len(result.pairs) == 19
    assert result.summary()["skipped"] == 1
    assert name in result.problems[0]
    assert __import__("re").search(message, result.problems[0])
    with pytest.raises(D.DataError, match=message) as info:
        D.scan_split(pets_copy, "trainval", strict=True)
    assert name in str(info.value)


def test_missing_split_file_names_the_layout(tmp_path):
    with pytest.raises(D.DataError, match="trainval.txt"):
        D.read_split(tmp_path, "train")
