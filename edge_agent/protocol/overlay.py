"""Pictures of masks for people: overlays with outline, legend and caption; palette PNGs.

Pure functions over numpy arrays (cv2 for drawing, zlib/struct for PNG), used by the
reference subscriber. Class colours are saturated and every region is ringed dark then
light, so it stays readable on black, white, ginger or grey fur alike.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

# RGB per class index; 0 is the background (not tinted, black in the palette PNG)
PALETTE_RGB = np.array([[0, 0, 0], [255, 0, 200], [0, 200, 255], [60, 230, 60], [255, 190, 0],
                        [150, 80, 255], [255, 90, 60], [0, 255, 200]], np.uint8)
ALPHA = 0.45  # class colour share in a tinted pixel
DARK, LIGHT = (20, 20, 20), (250, 250, 250)  # BGR outline rings


@dataclass(frozen=True)
class Caption:
    """What the overlay says about the picture (all from the mask message)."""

    device_id: str
    frame_id: int
    latency_ms: Optional[float] = None
    coverage: Optional[Sequence[Tuple[str, float]]] = None  # (class name, fraction)

    def text(self) -> str:
        parts = [self.device_id, f"frame {self.frame_id}"]
        if self.latency_ms is not None:
            parts.append(f"latency {self.latency_ms:.1f} ms")
        parts += [f"{name} {100 * frac:.1f}%" for name, frac in self.coverage or ()]
        return "  ".join(parts)


def colour_bgr(index: int) -> Tuple[int, int, int]:
    r, g, b = (int(v) for v in PALETTE_RGB[index % len(PALETTE_RGB)])
    return b, g, r


def upsample_labels(mask: np.ndarray, size_hw: Tuple[int, int]) -> np.ndarray:
    """Class mask -> ``size_hw`` with smooth region borders (bilinear per class, then argmax),
    for masks published at model resolution; a same-size mask is returned as is."""
    h, w = size_hw
    if mask.shape[:2] == (h, w):
        return mask
    present = [int(c) for c in np.unique(mask)]
    if len(present) == 1:
        return np.full((h, w), present[0], mask.dtype)
    planes = [cv2.resize((mask == c).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
              for c in present]
    return np.asarray(present, mask.dtype)[np.argmax(np.stack(planes), axis=0)]


def tint(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blend each non-background class's colour into ``image`` (BGR, same size as mask)."""
    out = image.copy()
    lut = PALETTE_RGB[np.arange(256) % len(PALETTE_RGB)][:, ::-1]  # BGR per index
    fg = mask > 0
    out[fg] = ((1 - ALPHA) * image[fg] + ALPHA * lut[mask[fg]]).astype(np.uint8)
    return out


def outline(image: np.ndarray, mask: np.ndarray, width: int = 2) -> np.ndarray:
    """Ring every region of every non-background class: dark outside, light inside."""
    for c in (int(c) for c in np.unique(mask) if c > 0):
        contours, _ = cv2.findContours((mask == c).astype(np.uint8), cv2.RETR_LIST,
                                       cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(image, contours, -1, DARK, 2 * width + 1, cv2.LINE_AA)
        cv2.drawContours(image, contours, -1, LIGHT, width, cv2.LINE_AA)
    return image


def _label_box(image: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> None:
    """Darken a box so white text reads over any picture."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 > x0 and y1 > y0:
        image[y0:y1, x0:x1] = (image[y0:y1, x0:x1] * 0.35).astype(np.uint8)


def legend(image: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """Colour swatch and name of each non-background class, top left."""
    scale = max(0.4, image.shape[0] / 800)
    line = int(26 * scale / 0.6)
    names = [(i, n) for i, n in enumerate(classes) if i > 0]
    if not names:
        return image
    width = max(cv2.getTextSize(n, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for _, n in names)
    _label_box(image, 4, 4, 4 + line + width + 16, 8 + line * len(names))
    for row, (i, name) in enumerate(names):
        y = 8 + row * line
        cv2.rectangle(image, (10, y + 3), (10 + line - 8, y + line - 5), colour_bgr(i), -1)
        cv2.rectangle(image, (10, y + 3), (10 + line - 8, y + line - 5), LIGHT, 1)
        cv2.putText(image, name, (10 + line, y + line - 8), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    LIGHT, 1, cv2.LINE_AA)
    return image


def caption(image: np.ndarray, text: str) -> np.ndarray:
    """One line of text on a dark band along the bottom."""
    h, w = image.shape[:2]
    scale = max(0.4, h / 800)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    band = th + base + 10
    _label_box(image, 0, h - band, w, h)
    cv2.putText(image, text, (8, h - base - 5), cv2.FONT_HERSHEY_SIMPLEX, scale, LIGHT, 1,
                cv2.LINE_AA)
    return image


def draw(mask: np.ndarray, frame: Optional[np.ndarray], classes: Sequence[str],
         label: Optional[Caption] = None) -> np.ndarray:
    """The overlay: ``frame`` (BGR) or a grey canvas of the mask's size, tinted by class,
    outlined, with a legend and (given ``label``) a caption."""
    if frame is None:
        frame = np.full(mask.shape[:2] + (3,), 64, np.uint8)
    mask = upsample_labels(mask, frame.shape[:2])
    image = outline(tint(frame, mask), mask, width=max(1, frame.shape[0] // 240))
    legend(image, classes)
    if label is not None:
        caption(image, label.text())
    return image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack("!I", len(data)) + kind + data +
            struct.pack("!I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def palette_png(mask: np.ndarray, palette: np.ndarray = PALETTE_RGB) -> bytes:
    """An 8-bit palette PNG of a class mask: pixel values stay the class indices, a viewer
    shows the palette's colours (cv2 cannot write palette PNGs)."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != np.uint8 or 0 in mask.shape:
        raise ValueError(f"expected a non-empty 2-D uint8 mask, got {mask.dtype} {mask.shape}")
    count = max(int(mask.max()) + 1, len(palette))
    colours = np.asarray(palette, np.uint8)[np.arange(count) % len(palette)]
    h, w = mask.shape
    rows = np.concatenate([np.zeros((h, 1), np.uint8), mask], axis=1)  # filter 0 per row
    return (b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", struct.pack("!IIBBBBB", w, h, 8, 3, 0, 0, 0))
            + _chunk(b"PLTE", colours.tobytes())
            + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
            + _chunk(b"IEND", b""))


def coverage_pairs(classes: List[str], coverage: object) -> List[Tuple[str, float]]:
    """(name, fraction) of the non-background classes from a mask message's coverage."""
    if not isinstance(coverage, dict):
        return []
    return [(n, float(coverage[n])) for n in classes[1:]
            if isinstance(coverage.get(n), (int, float))]
