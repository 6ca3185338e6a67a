"""Where to upsample masks to frame resolution: cv2 on the logits vs inside the OpenVINO graph.

    python benchmarks/bench_postprocess.py [--bundle demo/models/pets-mobile/3.2.0]
        [--frame 480x640] [--iterations 200]

Times per frame (ms, median): the model's inference alone; the class mask at model
resolution (``to_mask``); the old nearest-neighbour resize of that mask; the agent's
``to_frame_mask`` (bilinear logits with cv2, then the class decision); and the same model
with a bilinear Interpolate to frame size appended to its graph (inference + decision).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.bundle.manifest import open_target  # noqa: E402
from edge_agent.inference import postprocess  # noqa: E402


def median_ms(fn: Callable[[], object], iterations: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1000, 3)


def with_upsample(model, frame_hw):
    """The model with a bilinear Interpolate of its output to ``frame_hw`` (in-graph)."""
    import openvino as ov
    import openvino.opset13 as ops

    out = model.get_results()[0].input_value(0)
    interp = ops.interpolate(out, ops.constant(np.array(frame_hw, np.int64)), "linear", "sizes",
                             axes=ops.constant(np.array([2, 3], np.int64)),
                             coordinate_transformation_mode="half_pixel")
    return ov.Model([ops.result(interp)], model.get_parameters(), "upsampled")


def main(argv: Optional[List[str]] = None) -> Dict[str, float]:
    import openvino as ov

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=str(ROOT / "demo" / "models" / "pets-mobile" / "2.0.0"))
    p.add_argument("--target", default="cpu")
    p.add_argument("--frame", default="480x640", help="HxW")
    p.add_argument("--iterations", type=int, default=200)
    args = p.parse_args(argv)
    frame_hw = tuple(int(x) for x in args.frame.split("x"))
    manifest, _, path = open_target(Path(args.bundle), args.target)
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": "1"}
    model = core.read_model(str(path))
    image = np.random.default_rng(0).uniform(0, 255, manifest.input.shape).astype(np.float32)
    plain = core.compile_model(model, "CPU", config).create_infer_request()
    upsampled = core.compile_model(with_upsample(core.read_model(str(path)), frame_hw), "CPU",
                                   config).create_infer_request()
    logits = np.array(plain.infer({0: image})[0])
    kind = manifest.output.kind or "logits"
    mask = postprocess.to_mask(logits, kind)
    h, w = frame_hw
    result = {
        "infer_model_res": median_ms(lambda: plain.infer({0: image}), args.iterations),
        "to_mask_model_res": median_ms(lambda: postprocess.to_mask(logits, kind),
                                       args.iterations),
        "nearest_resize_of_mask": median_ms(
            lambda: cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST), args.iterations),
        "to_frame_mask_cv2_bilinear": median_ms(
            lambda: postprocess.to_frame_mask(logits, kind, frame_hw), args.iterations),
        "infer_with_in_graph_upsample_and_decision": median_ms(
            lambda: postprocess.to_mask(np.array(upsampled.infer({0: image})[0]), kind),
            args.iterations),
    }
    print(json.dumps({"bundle": args.bundle, "frame_hw": frame_hw, "threads": 1,
                      "median_ms": result}, indent=2))
    return result


if __name__ == "__main__":
    main()
