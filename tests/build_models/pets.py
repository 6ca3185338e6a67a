"""Synthetic Oxford-IIIT Pet folders in the official layout (for tests, no downloads).

A "pet" is a coloured ellipse on a noisy background; its trimap is 1 inside, a
3 band around the edge (the border) and 2 elsewhere, as in the real annotations.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Sequence, Tuple

import numpy as np
from PIL import Image


def synthetic_pet(rng: np.random.Generator, width: int, height: int
                  ) -> Tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx = rng.uniform(0.35, 0.65) * height, rng.uniform(0.35, 0.65) * width
    ry, rx = rng.uniform(0.2, 0.35) * height, rng.uniform(0.2, 0.35) * width
    r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    image = rng.normal(110, 25, (height, width, 3)).clip(0, 255)
    colour = rng.uniform([150, 40, 20], [255, 140, 90])
    inside = r <= 1.0
    image[inside] = colour + rng.normal(0, 12, (int(inside.sum()), 3))
    trimap = np.full((height, width), 2, np.uint8)
    trimap[r <= 1.15] = 3
    trimap[r <= 0.85] = 1
    return image.clip(0, 255).astype(np.uint8), trimap


def make_pets(root: Path, trainval: int = 20, test: int = 6, seed: int = 0,
              sizes: Sequence[Tuple[int, int]] = ((80, 64), (64, 72), (96, 80))) -> Path:
    """Write ``root`` with images/, annotations/trimaps/, trainval.txt and test.txt."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "trimaps").mkdir(parents=True, exist_ok=True)
    lines = {"trainval": [], "test": []}
    for i in range(trainval + test):
        split = "trainval" if i < trainval else "test"
        name = f"{'Abyssinian' if i % 2 else 'beagle'}_{i + 1}"
        w, h = sizes[i % len(sizes)]
        image, trimap = synthetic_pet(rng, w, h)
        Image.fromarray(image).save(root / "images" / f"{name}.jpg", quality=92)
        Image.fromarray(trimap).save(root / "annotations" / "trimaps" / f"{name}.png")
        lines[split].append(f"{name} {1 + i % 2} {1 + i % 2} 1")
    for split, rows in lines.items():
        (root / "annotations" / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return root


def make_tarballs(root: Path, out: Path) -> Tuple[Path, Path]:
    """images.tar.gz and annotations.tar.gz with the official top-level folders."""
    out.mkdir(parents=True, exist_ok=True)
    images, annotations = out / "images.tar.gz", out / "annotations.tar.gz"
    with tarfile.open(images, "w:gz") as tar:
        tar.add(root / "images", arcname="images")
    with tarfile.open(annotations, "w:gz") as tar:
        tar.add(root / "annotations", arcname="annotations")
    return images, annotations
