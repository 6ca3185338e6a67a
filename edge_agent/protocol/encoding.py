"""Mask encoders and decoders: base64 PNG of class indices, COCO-style RLE.

RLE follows pycocotools: runs over the column-major (Fortran) flattening,
starting with a run of zeros, ``counts`` compressed to pycocotools' string form.
Binary masks are plain COCO RLE; masks with more than two classes add ``values``,
the class index of each run.

Decoders take untrusted input (anything on the broker): sizes are checked against
the declared dimensions and ``max_pixels`` before anything is allocated, the work is
linear in the input, and every problem raises ``MaskError`` (a ``ValueError``), never
another exception.
"""

from __future__ import annotations

import base64
import binascii
import struct
from typing import Any, Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np

MAX_PIXELS = 1 << 25  # 33.5 M: an 8K frame fits; a 20000x20000 mask does not
MAX_COUNT_CHARS = 12  # one RLE count in the string form: 12 x 5 bits covers any real mask
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Class masks are long runs: zlib level 1 with its RLE strategy and no row filter costs
# ~0.1 ms for 256x256 against ~0.35 ms for level 1 defaults, and is half the size
# (docs/benchmarks-agent.md). An OpenCV without the filter flag ignores it.
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1,
              cv2.IMWRITE_PNG_STRATEGY, getattr(cv2, "IMWRITE_PNG_STRATEGY_RLE", 3)]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):
    PNG_PARAMS += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]


class MaskError(ValueError):
    """A mask that cannot be encoded or decoded; the message (one line) says why."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def encode_png(mask: np.ndarray) -> str:
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise MaskError(f"a mask must be a non-empty 2-D array, got shape {mask.shape}")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(mask, dtype=np.uint8), PNG_PARAMS)
    if not ok:
        raise MaskError("PNG encoding failed")
    return base64.b64encode(buf.tobytes()).decode("ascii")


def _b64(data: Any, max_bytes: int) -> bytes:
    if not isinstance(data, (str, bytes)):
        raise MaskError(f"expected base64 text, got {type(data).__name__}")
    if len(data) > max_bytes * 4 // 3 + 4:
        raise MaskError(f"base64 text of {len(data)} characters is larger than allowed")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MaskError(f"not base64: {exc}") from None


def png_header(raw: bytes) -> Tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from a PNG's IHDR, read without decoding."""
    if len(raw) < 33 or raw[:8] != PNG_SIGNATURE or raw[12:16] != b"IHDR":
        raise MaskError("not a PNG")
    width, height, depth, colour = struct.unpack(">IIBB", raw[16:26])
    return width, height, depth, colour


def jpeg_size(raw: bytes) -> Tuple[int, int]:
    """(width, height) from a JPEG's first SOF marker, read without decoding."""
    if raw[:2] != b"\xff\xd8":
        raise MaskError("not a JPEG")
    pos, end = 2, len(raw)
    while pos + 4 <= end:
        if raw[pos] != 0xFF:
            raise MaskError("JPEG: bad marker")
        marker = raw[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # no length
            pos += 2
            continue
        length = struct.unpack(">H", raw[pos + 2:pos + 4])[0]
        if length < 2:
            raise MaskError("JPEG: bad segment length")
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                      0xCF):
            if pos + 9 > end:
                break
            height, width = struct.unpack(">HH", raw[pos + 5:pos + 9])
            return width, height
        pos += 2 + length
    raise MaskError("JPEG: no frame header")


def image_size(raw: bytes) -> Tuple[int, int]:
    """(width, height) of a PNG or JPEG from its header: bound pixels before decoding."""
    if raw[:8] == PNG_SIGNATURE:
        width, height, _, _ = png_header(raw)
        return width, height
    return jpeg_size(raw)


# A photo cannot be smaller than this many bytes for its pixel count: libjpeg's best on
# a blank frame is ~170 pixels a byte (optimised Huffman tables), deflate's on a blank
# 8-bit grey PNG ~1030. A header claiming more is a truncated or forged image that the
# decoder would fill in (a 631-byte JPEG claiming 4096x4096 becomes a 50 MB frame).
MAX_JPEG_PIXELS_PER_BYTE = 1024
MAX_PNG_PIXELS_PER_BYTE = 4096


def image_budget_problem(raw: bytes, width: int, height: int,
                         max_pixels: int = MAX_PIXELS) -> Optional[str]:
    """Why an encoded photo's header size is not believable or too large (one line), or
    None: at most ``max_pixels`` and at most ``MAX_*_PIXELS_PER_BYTE`` of its bytes.
    Call it with the header's size before decoding an untrusted image."""
    pixels = width * height
    if pixels > max_pixels:
        return f"image of {width}x{height} ({pixels} pixels) is over {max_pixels} pixels"
    png = raw[:8] == PNG_SIGNATURE
    per_byte = MAX_PNG_PIXELS_PER_BYTE if png else MAX_JPEG_PIXELS_PER_BYTE
    if pixels > per_byte * len(raw):
        return (f"image claims {width}x{height} in {len(raw)} bytes: over {per_byte} pixels "
                f"per byte for {'PNG' if png else 'JPEG'} (truncated or forged)")
    return None


def decode_png(data: Any, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A base64 8-bit single-channel PNG -> uint8 HxW; MaskError for anything else."""
    raw = _b64(data, max_bytes=max_pixels * 2 + 1024)
    width, height, depth, colour = png_header(raw)
    if depth != 8 or colour != 0:
        raise MaskError(f"mask PNG must be 8-bit greyscale, got bit depth {depth}, "
                        f"colour type {colour}")
    if width == 0 or height == 0 or width * height > max_pixels:
        raise MaskError(f"mask PNG of {width}x{height} is outside 1..{max_pixels} pixels")
    try:
        mask = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise MaskError(f"PNG does not decode: {str(exc).strip()[:120]}") from None
    if mask is None or mask.dtype != np.uint8 or mask.shape != (height, width):
        raise MaskError("PNG does not decode to its declared 8-bit greyscale size")
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
    """pycocotools' compressed counts -> run lengths, vectorised (linear in ``len(text)``)."""
    return _string_to_counts(text).tolist()


def _string_to_counts(text: str) -> np.ndarray:
    try:
        codes = np.frombuffer(text.encode("ascii"), np.uint8).astype(np.int64) - 48
    except UnicodeEncodeError:
        raise MaskError("RLE counts string is not ASCII") from None
    if codes.size == 0:
        return np.zeros(0, np.int64)
    if codes.min() < 0 or codes.max() > 63:
        raise MaskError("RLE counts string has characters outside '0'..'o'")
    last = np.flatnonzero((codes & 0x20) == 0)  # the final character of each count
    if last.size == 0 or last[-1] != codes.size - 1:
        raise MaskError("RLE counts string ends in the middle of a count")
    first = np.concatenate(([0], last[:-1] + 1))
    if int((last - first).max()) + 1 > MAX_COUNT_CHARS:
        raise MaskError(f"RLE count longer than {MAX_COUNT_CHARS} characters")
    group = np.repeat(np.arange(last.size), last - first + 1)
    shift = 5 * (np.arange(codes.size) - first[group])
    values = np.zeros(last.size, np.int64)
    np.add.at(values, group, (codes & 0x1F) << shift)
    negative = (codes[last] & 0x10) != 0  # sign-extend from the last 5-bit group
    values[negative] -= np.int64(1) << (5 * (last - first + 1))[negative]
    # counts[i] += counts[i - 2] for i > 2: running sums over each parity from index 3 / 4
    for start in (3, 4):
        if values.size > start:
            seed = values[start - 2]
            values[start::2] = np.cumsum(values[start::2]) + seed
    return values


def _size(rle: Dict[str, Any]) -> Tuple[int, int]:
    size = rle.get("size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
        raise MaskError(f"RLE size must be [height, width] integers, got {size!r:.40}")
    return int(size[0]), int(size[1])


def _int_array(values: Any, name: str, limit: int) -> np.ndarray:
    if not isinstance(values, list) or len(values) > limit:
        raise MaskError(f"RLE {name} must be a list of at most {limit} integers")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise MaskError(f"RLE {name} must hold integers only")
    try:
        return np.asarray(values, np.int64)
    except OverflowError:
        raise MaskError(f"RLE {name} holds an integer out of range") from None


def decode_rle(rle: Any, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """COCO-style RLE (``values`` for multi-class) -> uint8 HxW; MaskError for bad input."""
    if not isinstance(rle, dict):
        raise MaskError(f"RLE must be an object, got {type(rle).__name__}")
    h, w = _size(rle)
    if h < 0 or w < 0 or h * w > max_pixels:
        raise MaskError(f"RLE size {h}x{w} is outside 0..{max_pixels} pixels")
    pixels = h * w
    counts_in = rle.get("counts")
    if isinstance(counts_in, str):
        if len(counts_in) > MAX_COUNT_CHARS * (pixels + 2):
            raise MaskError("RLE counts string is longer than its size allows")
        counts = _string_to_counts(counts_in)
    else:
        counts = _int_array(counts_in, "counts", pixels + 2)
    if counts.size and int(counts.min()) < 0:
        raise MaskError("RLE counts must not be negative")
    total = int(counts.sum(dtype=np.float64)) if counts.size else 0
    if total != pixels or int(counts.sum()) != pixels:
        raise MaskError(f"RLE covers {total} pixels, size says {h}x{w}")
    if rle.get("values") is None:
        values = (np.arange(counts.size) % 2).astype(np.uint8)
    else:
        values = _int_array(rle["values"], "values", counts.size)
        if values.size != counts.size or (values.size and (values.min() < 0
                                                           or values.max() > 255)):
            raise MaskError("RLE values must give one class 0..255 per count")
        values = values.astype(np.uint8)
    flat = np.repeat(values, counts)
    return flat.reshape((h, w), order="F")


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


# the one table of mask encodings: name -> (encode, decode); names as in messages
CODECS: Dict[str, Tuple[Callable[[np.ndarray], Any], Callable[[Any, int], np.ndarray]]] = {
    "png": (encode_png, decode_png), "rle": (encode_rle, decode_rle)}


def _codec(encoding: Any) -> Tuple[Callable[[np.ndarray], Any], Callable[[Any, int], np.ndarray]]:
    codec = CODECS.get(encoding) if isinstance(encoding, str) else None
    if codec is None:
        raise MaskError(f"unknown mask encoding {encoding!r:.20} ({' or '.join(CODECS)})")
    return codec


def encode(mask: np.ndarray, encoding: str) -> Any:
    return _codec(encoding)[0](mask)


def decode(data: Any, encoding: Any, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a mask message's ``mask``; raises MaskError (only) for anything unusable."""
    return _codec(encoding)[1](data, max_pixels)
