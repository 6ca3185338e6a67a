"""Per-frame figures through the pipeline: in the graph at model resolution, from the scores
at frame resolution, into the mask message and the camera's window; never NaN."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from edge_agent.bundle.manifest import OpenedBundle
from edge_agent.cameras import Camera, Outputs
from edge_agent.config import CameraConfig, ModelConfig, OutputConfig, SourceConfig
from edge_agent.health.stats import Counters
from edge_agent.inference.engine import Engine
from edge_agent.inference.pipeline import FrameMeta, Pipeline
from edge_agent.quality.drift import DriftSettings, QualityMonitor
from edge_agent.quality.figures import frame_figures
from edge_agent.sources.slots import FrameSlots
from tests.agent.helpers import scene, validator


def _setup(bundle, resolution: str):
    sent = []
    camera = Camera(CameraConfig.from_sections("cam", SourceConfig(uri="x", stall_timeout_s=0),
                                               OutputConfig(max_publish_fps=0.0)),
                    Outputs(mask=lambda text: sent.append(json.loads(text)) or True))
    camera.quality = QualityMonitor(DriftSettings(), None)
    engine = Engine(ModelConfig(bundle=str(bundle), devices=["CPU"]),
                    OpenedBundle.open(str(bundle), "cpu"))
    engine.load()
    pipe = Pipeline(engine, resolution, FrameSlots(), lambda _cid: camera, Counters(),
                    threading.Event(), quality=lambda _engine: 0.9)
    engine.start(pipe._on_result, decide=pipe._decide_in_graph(), quality=0.9)
    return pipe, engine, camera, sent


def _run(pipe, engine, camera, frames):
    for i, frame in enumerate(frames):
        meta = FrameMeta(i, "cam", i + 1, time.time(), time.monotonic(), frame.shape[:2],
                         engine=engine)
        pipe.slots_free.acquire()
        engine.submit(frame[np.newaxis], meta)
    engine.drain()
    outputs = []
    for _ in frames:
        meta, output, figures = pipe.reorder.pop(1.0)
        outputs.append((output, figures))
        pipe._publish_one(camera, meta, output, figures)
    return outputs


@pytest.mark.parametrize("resolution", ["model", "frame"])
def test_each_mask_carries_the_frames_figures_and_the_window_counts_them(tmp_path,
                                                                         resolution):
    from tests.helpers.tiny_bundle import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path, targets=("cpu",))
    pipe, engine, camera, sent = _setup(bundle, resolution)
    frames = [scene(i, (64, 64)) for i in range(3)]
    frames[2] = np.full((64, 64, 3), 128, np.uint8)  # red == blue: every pixel unsure
    outputs = _run(pipe, engine, camera, frames)
    check = validator("mask")
    assert len(sent) == 3
    for msg, (output, figures) in zip(sent, outputs):
        check.validate(msg)
        assert set(msg["quality"]) == {"uncertain", "margin"}
        if resolution == "frame":  # scores reach Python; the figures are computed there
            assert figures is None and output.dtype == np.float32
            want = frame_figures(output, "logits", 0.9)
            assert msg["quality"] == want.to_dict()
        else:  # the graph's
            assert output.dtype == np.uint8 and msg["quality"] == figures.to_dict()
    assert sent[0]["quality"]["uncertain"] < 0.5 < sent[2]["quality"]["uncertain"]
    camera.quality.evaluate()
    assert camera.quality.window["frames"] == 3


def test_nan_figures_never_reach_a_message(tmp_path):
    from tests.helpers.tiny_bundle import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path, targets=("cpu",))
    pipe, engine, camera, sent = _setup(bundle, "frame")
    meta = FrameMeta(0, "cam", 1, time.time(), time.monotonic(), (64, 64), engine=engine)
    scores = np.zeros((1, 2, 64, 64), np.float32)
    scores[0, 1, 3, 3] = np.nan
    pipe._publish_one(camera, meta, scores, None)
    assert len(sent) == 1 and "quality" not in sent[0]
    assert "NaN" not in json.dumps(sent[0])
    assert camera.quality.unscored == 1
