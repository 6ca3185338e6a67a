"""Mask encoders and decoders: base64 PNG of class indices, COCO-style RLE.

RLE follows pycocotools: runs over the column-major (Fortran) flattening,
starting with a run of zeros, ``counts`` compressed to pycocotools' string form.
Binary masks are plain COCO RLE; masks with more than two classes add ``values``,
the class index of each run.
"""

from __future__ import annotations

import base64
from typing import Any, Dict, List

import cv2
import numpy as np


def encode_png(mask: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(mask, dtype=np.uint8),
                           [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("PNG encoding failed")
    return base64.b64encode(buf.tobytes()).decode("ascii")


def decode_png(data: str) -> np.ndarray:
    raw = np.frombuffer(base64.b64decode(data), dtype=np.uint8)
    mask = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise ValueError("not a PNG")
    return mask


def _runs(mask: np.ndarray):
    flat = np.asarray(mask, dtype=np.uint8).ravel(order="F")
    if flat.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.uint8)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change))
    lengths = np.diff(np.concatenate((starts, [flat.size])))
    return lengths, flat[starts]


def counts_to_string(counts: List[int]) -> str:
    out = []
    for i, value in enumerate(counts):
        x = int(value) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def string_to_counts(text: str) -> List[int]:
    counts: List[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            c = ord(text[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def encode_rle(mask: np.ndarray) -> Dict[str, Any]:
    h, w = mask.shape[:2]
    lengths, values = _runs(mask)
    if values.size and values.max() <= 1:
        counts = lengths.tolist()
        if values[0] == 1:  # COCO runs always start with zeros
            counts = [0, *counts]
        return {"size": [int(h), int(w)], "counts": counts_to_string(counts)}
    return {"size": [int(h), int(w)], "counts": counts_to_string(lengths.tolist()),
            "values": values.tolist()}


def decode_rle(rle: Dict[str, Any]) -> np.ndarray:
    h, w = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = string_to_counts(counts)
    values = rle.get("values")
    if values is None:
        values = [i % 2 for i in range(len(counts))]
    flat = np.repeat(np.asarray(values, np.uint8), np.asarray(counts, np.int64))
    if flat.size != h * w:
        raise ValueError(f"RLE covers {flat.size} pixels, size says {h}x{w}")
    return flat.reshape((h, w), order="F")


def encode(mask: np.ndarray, encoding: str) -> Any:
    return encode_png(mask) if encoding == "png" else encode_rle(mask)


def decode(data: Any, encoding: str) -> np.ndarray:
    return decode_png(data) if encoding == "png" else decode_rle(data)
