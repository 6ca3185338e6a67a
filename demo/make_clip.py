"""Make demo/clip.mp4: slow pans and zooms over a few test-split images of the Pet sample.

    python demo/make_clip.py --data /path/to/oxford-pets-sample --out demo/clip.mp4

Only test-split images are used, so the demo model never saw them in training.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional, Sequence

import cv2
import numpy as np


def ken_burns(image: np.ndarray, frames: int, width: int, height: int, seed: int
              ) -> List[np.ndarray]:
    """Frames that zoom from 100 % to ~80 % of the picture while panning across it."""
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    aspect = width / height
    base_w = min(w, h * aspect)
    z0, z1 = (1.0, 0.8) if seed % 2 == 0 else (0.8, 1.0)
    c0 = np.array([w / 2, h / 2]) + rng.uniform(-0.08, 0.08, 2) * [w, h]
    c1 = np.array([w / 2, h / 2]) + rng.uniform(-0.08, 0.08, 2) * [w, h]
    out = []
    for i in range(frames):
        t = 0.5 - 0.5 * np.cos(np.pi * i / max(1, frames - 1))  # ease in/out
        cw = base_w * (z0 + (z1 - z0) * t)
        ch = cw / aspect
        cx, cy = c0 + (c1 - c0) * t
        x0 = float(np.clip(cx - cw / 2, 0, w - cw))
        y0 = float(np.clip(cy - ch / 2, 0, h - ch))
        m = np.array([[width / cw, 0, -x0 * width / cw], [0, height / ch, -y0 * height / ch]])
        out.append(cv2.warpAffine(image, m, (width, height), flags=cv2.INTER_LINEAR))
    return out


def main(argv: Optional[Sequence[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="demo/clip.mp4")
    p.add_argument("--names", default="Abyssinian_26,Bengal_25,american_bulldog_208,"
                   "Abyssinian_51,Bengal_200,american_bulldog_35")
    p.add_argument("--seconds-each", type=float, default=2.5)
    p.add_argument("--fps", type=int, default=12)
    p.add_argument("--size", default="640x480")
    args = p.parse_args(argv)
    width, height = map(int, args.size.split("x"))
    test = set((Path(args.data) / "annotations" / "test.txt").read_text().split())
    names = [n for n in args.names.split(",") if n]
    missing = [n for n in names if n not in test]
    if missing:
        raise SystemExit(f"not in the test split: {missing}")
    writer = cv2.VideoWriter(args.out, cv2.VideoWriter_fourcc(*"mp4v"), args.fps,
                             (width, height))
    count = 0
    for k, name in enumerate(names):
        image = cv2.imread(str(Path(args.data) / "images" / f"{name}.jpg"))
        for frame in ken_burns(image, int(args.seconds_each * args.fps), width, height, k):
            writer.write(frame)
            count += 1
    writer.release()
    cap = cv2.VideoCapture(args.out)
    read = 0
    while cap.read()[0]:
        read += 1
    cap.release()
    report = {"clip": args.out, "frames": count, "read_back": read, "fps": args.fps,
              "seconds": count / args.fps, "bytes": Path(args.out).stat().st_size,
              "images": names}
    print(report)
    return report


if __name__ == "__main__":
    main()
