"""Oxford-IIIT Pet data: layout checks, label mapping, resizing.

The official layout is ``images/<Name>.jpg``, ``annotations/trimaps/<Name>.png``
(1 pet, 2 background, 3 border) and ``annotations/{trainval,test}.txt``.
Pure functions (``map_trimap``, ``resize_pair``) work on numpy arrays; ``scan_split``
checks every pair and says what is wrong with which file. Training augmentation is
done on batches by ``build_models.augment``.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from build_models.errors import BuildError
from edge_agent.inference.preprocess import model_resize

LABEL_MODES = ("binary", "trimap")
CLASSES = {"binary": ["background", "pet"], "trimap": ["background", "pet", "border"]}
# trimap value -> class index, per label mode (index 0 of the table is unused)
_LUT = {"binary": np.array([0, 1, 0, 1], np.uint8), "trimap": np.array([0, 1, 0, 2], np.uint8)}
SPLITS = ("train", "val", "trainval", "test")
VAL_EVERY = 10  # the seed: every 10th line of trainval.txt is validation


class DataError(BuildError):
    """Bad data; the message names the file."""


@dataclass(frozen=True)
class Pair:
    name: str
    image: Path
    trimap: Path


@dataclass
class ScanResult:
    pairs: List[Pair]
    problems: List[str] = field(default_factory=list)

    def summary(self) -> Dict[str, object]:
        return {"usable": len(self.pairs), "skipped": len(self.problems),
                "problems": list(self.problems)}


def map_trimap(trimap: np.ndarray, label_mode: str = "binary") -> np.ndarray:
    """Trimap {1,2,3} -> classes (binary: pet+border 1; trimap: 0 bg, 1 pet, 2 border)."""
    if label_mode not in _LUT:
        raise ValueError(f"label_mode '{label_mode}' unknown (valid: {', '.join(LABEL_MODES)})")
    bad = ~np.isin(trimap, (1, 2, 3))
    if bad.any():
        values = sorted(int(v) for v in np.unique(trimap[bad]))[:5]
        raise DataError(f"trimap values outside {{1,2,3}}: {values}")
    return _LUT[label_mode][trimap]


def check_size(size: int) -> int:
    if size <= 0 or size % 32:
        raise ValueError(f"image size {size} must be a positive multiple of 32 "
                         f"(e.g. {max(32, round(size / 32) * 32)})")
    return size


def resize_pair(image: np.ndarray, mask: Optional[np.ndarray], size: int
                ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Image by the device's own resize rule (edge_agent's ``model_resize``: what the agent's
    graph does to a camera frame, so training, evaluation and the device see one picture),
    mask nearest, both to size x size."""
    img = model_resize(image, (size, size))
    if mask is None:
        return img, None
    return img, np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST))


def read_split(root: Path, split: str) -> List[str]:
    """Names of a split: train/val (every 10th trainval line is val), trainval or test."""
    if split not in SPLITS:
        raise ValueError(f"split '{split}' unknown (valid: {', '.join(SPLITS)})")
    src = "test" if split == "test" else "trainval"
    path = Path(root) / "annotations" / f"{src}.txt"
    if not path.is_file():
        raise DataError(f"{path}: split file missing (expected the official Oxford-IIIT Pet "
                        f"layout: images/, annotations/trimaps/, annotations/{src}.txt)")
    names = [ln.split()[0] for ln in path.read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    if split == "val":
        return names[::VAL_EVERY]
    if split == "train":
        return [n for i, n in enumerate(names) if i % VAL_EVERY]
    return names


def load_image(path: Path) -> np.ndarray:
    """RGB uint8 array of a JPEG; DataError naming the file otherwise."""
    try:
        with Image.open(path) as im:
            if im.format != "JPEG":
                raise DataError(f"{path}: image is {im.format or 'unknown format'}, not JPEG")
            return np.asarray(im.convert("RGB"))
    except DataError:
        raise
    except Exception as exc:  # PIL raises many types for broken files
        raise DataError(f"{path}: unreadable image ({exc})") from exc


def load_trimap(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L") if im.mode not in ("L", "P") else im)
    except Exception as exc:
        raise DataError(f"{path}: unreadable trimap ({exc})") from exc


def load_pair(pair: Pair, label_mode: str = "binary") -> Tuple[np.ndarray, np.ndarray]:
    """Decode and check one pair: JPEG image, trimap in {1,2,3}, same size."""
    image = load_image(pair.image)
    trimap = load_trimap(pair.trimap)
    if image.shape[:2] != trimap.shape[:2]:
        raise DataError(f"{pair.image}: image is {image.shape[1]}x{image.shape[0]} but trimap "
                        f"{pair.trimap} is {trimap.shape[1]}x{trimap.shape[0]}")
    try:
        mask = map_trimap(trimap, label_mode)
    except DataError as exc:
        raise DataError(f"{pair.trimap}: {exc}") from None
    return image, mask


def scan_split(root: Path, split: str, strict: bool = False, decode: bool = True) -> ScanResult:
    """Pairs of a split whose files exist (and decode, with ``decode``); problems listed.

    With ``strict`` the first problem raises DataError; otherwise bad pairs are skipped.
    """
    root = Path(root)
    result = ScanResult(pairs=[])
    split_file = root / "annotations" / ("test.txt" if split == "test" else "trainval.txt")
    for name in read_split(root, split):
        pair = Pair(name, root / "images" / f"{name}.jpg",
                    root / "annotations" / "trimaps" / f"{name}.png")
        try:
            for path in (pair.image, pair.trimap):
                if not path.is_file():
                    raise DataError(f"{split_file}: line '{name}' names a missing file {path}")
            if decode:
                load_pair(pair)
        except DataError as exc:
            if strict:
                raise
            result.problems.append(str(exc))
            continue
        result.pairs.append(pair)
    if not result.pairs:
        raise DataError(f"{root}: no usable pairs in split '{split}'"
                        + (f" ({len(result.problems)} skipped)" if result.problems else ""))
    return result


def data_hash(pairs: Sequence[Pair]) -> str:
    """sha256 over the pair names, image file sizes and trimap contents (cheap, order-free)."""
    digest = hashlib.sha256()
    for p in sorted(pairs, key=lambda q: q.name):
        digest.update(f"{p.name}:{p.image.stat().st_size}:".encode())
        digest.update(hashlib.sha256(p.trimap.read_bytes()).digest())
    return digest.hexdigest()


class PetData:
    """Indexable (image uint8 HxWx3, mask uint8 HxW) at ``size``, decoded once and cached."""

    def __init__(self, pairs: Sequence[Pair], size: int, label_mode: str = "binary",
                 seed: int = 0):
        self.pairs = list(pairs)
        self.size = check_size(size)
        self.label_mode = label_mode
        self.rng = random.Random(seed)
        self._cache: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def raw(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        if i not in self._cache:
            image, mask = load_pair(self.pairs[i], self.label_mode)
            self._cache[i] = resize_pair(image, mask, self.size)
        return self._cache[i]

    def __getitem__(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        return self.raw(i)

    def arrays(self) -> Tuple[np.ndarray, np.ndarray]:
        """All pairs stacked: images [N,H,W,3] uint8, masks [N,H,W] uint8 (training keeps
        them on its device and augments there)."""
        items = [self[i] for i in range(len(self))]
        return np.stack([im for im, _ in items]), np.stack([m for _, m in items])

    def batches(self, batch_size: int, shuffle: bool = False):
        """Yield (images NCHW float32 0..255 RGB, masks NHW int64)."""
        order = list(range(len(self)))
        if shuffle:
            self.rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            items = [self[i] for i in order[start:start + batch_size]]
            images = np.stack([im for im, _ in items]).transpose(0, 3, 1, 2).astype(np.float32)
            yield np.ascontiguousarray(images), np.stack([m for _, m in items]).astype(np.int64)
