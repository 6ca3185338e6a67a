"""Where a model fails, before and after: the worst test images of the new bundle and chosen
demo-clip frames, each as the agent's own overlay (mask tinted over the frame) from both
bundles side by side, with the ground truth where there is one.

    python benchmarks/failure_gallery.py --before <3.1.0 from git history> \\
        --after demo/models/pets-mobile/3.2.0 --data PETS --clip demo/clip.mp4 \\
        --frames 6,42,204 --out demo/models/pets-mobile/3.2.0/report/failures.jpg

Frames are numbered as the agent numbers them (1 = the first frame; a looping file goes on
counting, so frame 204 of the 180-frame demo clip is its 24th). Each image goes through the
bundle's ``cpu`` IR after ``model_resize``, the rule the agent applies. Writes the JPEG and
a JSON of the per-image figures beside it; with ``--out`` in a bundle's ``report/`` the two
files are hashed into that bundle's manifest (``files``), so it still verifies.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from build_models import data as pets  # noqa: E402
from build_models.evaluate import compile_ov, confusion, metrics  # noqa: E402
from edge_agent.inference.postprocess import to_mask  # noqa: E402
from edge_agent.inference.preprocess import model_resize  # noqa: E402
from edge_agent.protocol import overlay  # noqa: E402

TILE = 256
CLASSES = ["background", "pet"]


class Model:
    """A bundle's cpu IR: u8 RGB image of any size -> class mask at model size."""

    def __init__(self, bundle: Path) -> None:
        manifest = json.loads((bundle / "manifest.json").read_text())
        self.label = f"{manifest['name']} {manifest['version']}"
        self.size = tuple(manifest["input"]["shape"][2:4])
        self.compiled, _ = compile_ov(bundle / manifest["targets"]["cpu"]["model"], "f32")
        self.request = self.compiled.create_infer_request()

    def mask(self, rgb: np.ndarray) -> np.ndarray:
        x = model_resize(rgb, self.size).transpose(2, 0, 1)[None].astype(np.float32)
        return to_mask(np.array(self.request.infer({0: x})[0]))


def clip_frames(clip: Path, ids: Sequence[int]) -> Dict[int, np.ndarray]:
    """RGB frames by the agent's frame id (1-based, counting on over loops)."""
    cap = cv2.VideoCapture(str(clip))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    if not frames:
        raise SystemExit(f"failure_gallery: cannot read {clip}")
    return {i: frames[(i - 1) % len(frames)] for i in ids}


def tile(rgb: np.ndarray, mask: Optional[np.ndarray], text: str) -> np.ndarray:
    """The agent's overlay of ``mask`` on the frame (or the frame alone), TILE high."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    image = bgr if mask is None else overlay.draw(mask, bgr, CLASSES)
    scale = TILE / image.shape[0]
    image = cv2.resize(image, (max(1, round(image.shape[1] * scale)), TILE),
                       interpolation=cv2.INTER_AREA)
    image = cv2.copyMakeBorder(image, 0, 0, 0, max(0, 360 - image.shape[1]),
                               cv2.BORDER_CONSTANT, value=(255, 255, 255))[:, :360]
    cv2.rectangle(image, (0, 0), (359, 22), (255, 255, 255), -1)
    cv2.putText(image, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                cv2.LINE_AA)
    return image


def per_image(models: Sequence[Model], pairs: Sequence[pets.Pair]
              ) -> List[Tuple[pets.Pair, np.ndarray, np.ndarray, List[Dict[str, float]]]]:
    rows = []
    for pair in pairs:
        rgb, truth = pets.load_pair(pair)
        _, small = pets.resize_pair(rgb, truth, models[-1].size[0])
        masks = [m.mask(rgb) for m in models]
        rows.append((pair, rgb, small, [metrics(confusion(k, small, 2)) | {"mask": k}
                                        for k in masks]))
    return rows


def build(before: Path, after: Path, data: Path, clip: Optional[Path], frame_ids: Sequence[int],
          worst: int, out: Path) -> Dict[str, Any]:
    models = [Model(before), Model(after)]
    rows = per_image(models, pets.scan_split(data, "test").pairs)
    rows.sort(key=lambda r: r[3][1]["fg_iou"])  # the new model's worst first
    lines, record = [], {"before": models[0].label, "after": models[1].label, "test": [],
                         "clip": []}
    for pair, rgb, truth, figs in rows[:worst]:
        lines.append(np.hstack(
            [tile(rgb, f["mask"], f"{m.label}: pet IoU {f['fg_iou']:.3f}")
             for m, f in zip(models, figs)] + [tile(rgb, truth, f"{pair.name}: truth")]))
        record["test"].append({"name": pair.name, **{
            m.label: {k: round(f[k], 4) for k in ("fg_iou", "fg_dice", "dice")}
            for m, f in zip(models, figs)}})
    if clip is not None:
        for fid, rgb in clip_frames(clip, frame_ids).items():
            lines.append(np.hstack([tile(rgb, m.mask(rgb), f"{m.label}: clip frame {fid}")
                                    for m in models] + [tile(rgb, None, "frame")]))
            record["clip"].append(fid)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), np.vstack(lines), [cv2.IMWRITE_JPEG_QUALITY, 85])
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    if out.parent.name == "report" and (out.parent.parent / "manifest.json").is_file():
        register(out.parent.parent, [out, out.with_suffix(".json")])
    return record


def register(bundle: Path, paths: Sequence[Path]) -> None:
    """Hash report files into the bundle's manifest (build_models.bundle.add_files)."""
    from build_models.bundle import add_files

    add_files(bundle, [p.resolve().relative_to(bundle.resolve()).as_posix() for p in paths])


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, type=Path)
    p.add_argument("--after", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path, help="Oxford-IIIT Pet folder (test)")
    p.add_argument("--clip", type=Path, help="a video whose frames are shown too")
    p.add_argument("--frames", default="6,42,204", help="clip frame ids (1-based)")
    p.add_argument("--worst", type=int, default=6, help="how many of the worst test images")
    p.add_argument("--out", type=Path, required=True, help="the gallery JPEG")
    args = p.parse_args(argv)
    ids = [int(x) for x in args.frames.split(",") if x.strip()]
    record = build(args.before, args.after, args.data, args.clip, ids, args.worst, args.out)
    for row in record["test"]:
        print(row["name"], {k: v["fg_iou"] for k, v in row.items() if k != "name"})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
