"""The agent's own graph steps (resize, class decision) on real compiled IRs vs the Python path."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.bundle.manifest import OpenedBundle
from edge_agent.config import ModelConfig
from edge_agent.inference import ovcompat, postprocess, preprocess
from edge_agent.inference.engine import MAX_SIZES, STATIC_SIZES, Engine
from edge_agent.quality.figures import frame_figures
from tests.helpers.tiny_bundle import make_tiny_bundle, started_engine


def _scores_model(channels: int, sigmoid: bool = False, scale: float = 1.0):
    import openvino as ov
    from openvino import opset13 as ops

    rng = np.random.default_rng(channels)
    image = ops.parameter([1, 3, 12, 16], ov.Type.f32, name="image")
    w = rng.standard_normal((channels, 3, 3, 3)).astype(np.float32)
    x = ops.convolution(image, ops.constant(w * scale), [1, 1], [1, 1], [1, 1], [1, 1])
    if sigmoid:
        x = ops.sigmoid(x) if channels == 1 else ops.softmax(x, 1)
    x.output(0).get_tensor().set_names({"logits"})
    return ov.Model([x.output(0)], [image], "scores")


@pytest.mark.parametrize("channels,kind", [(1, "logits"), (1, "probabilities"), (2, "logits"),
                                           (5, "logits")])
def test_class_decision_in_graph_matches_to_mask(channels, kind):
    core = ovcompat.new_core()
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 1, 3, 12, 16)).astype(np.float32)
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}  # bf16 on AMX: two graphs could round apart
    plain = core.compile_model(_scores_model(channels, kind == "probabilities"), "CPU", f32)
    decided_model = ovcompat.append_class_decision(
        _scores_model(channels, kind == "probabilities"), 0, kind)
    decided = core.compile_model(decided_model, "CPU", f32)
    assert decided.outputs[0].get_element_type() == ovcompat.Type.u8
    assert "logits" in decided.outputs[0].get_names()  # the manifest's name still finds it
    for frame in x:
        scores = plain.create_infer_request().infer({0: frame})[0]
        classes = decided.create_infer_request().infer({0: frame})[0]
        assert classes.shape == (1, 12, 16) and classes.dtype == np.uint8
        want = postprocess.to_mask(scores, kind)
        assert np.array_equal(postprocess.to_mask(classes, "classes"), want)
        assert np.array_equal(postprocess.to_frame_mask(classes, "classes", None), want)


@pytest.mark.parametrize("channels,kind", [(1, "logits"), (1, "probabilities"), (2, "logits"),
                                           (2, "probabilities"), (5, "logits"),
                                           (5, "probabilities")])
@pytest.mark.parametrize("threshold", [0.9, 0.7])
def test_frame_quality_in_graph_matches_numpy(channels, kind, threshold):
    """The graph's ``frame_quality`` output == edge_agent.quality.figures within 1e-3, next
    to an unchanged class decision."""
    core = ovcompat.new_core()
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 1, 3, 12, 16)).astype(np.float32)
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}
    probs = kind == "probabilities"
    plain = core.compile_model(_scores_model(channels, probs, 0.7), "CPU", f32)
    model = ovcompat.append_frame_quality(_scores_model(channels, probs, 0.7), 0, kind,
                                          threshold)
    model = ovcompat.append_class_decision(model, 0, kind)
    both = core.compile_model(model, "CPU", f32)
    at = ovcompat.output_index(both, ovcompat.QUALITY_OUTPUT)
    assert at == 1 and ovcompat.output_index(both, "logits") == 0
    seen = []
    for frame in x:
        scores = plain.create_infer_request().infer({0: frame})[0]
        got = both.create_infer_request().infer({0: frame})
        pair = got[both.outputs[at]]
        assert pair.shape == (2,) and pair.dtype == np.float32
        want = frame_figures(scores, kind, threshold)
        assert abs(float(pair[0]) - want.uncertain) < 1e-3
        assert abs(float(pair[1]) - want.margin) < 1e-3
        assert np.array_equal(got[both.outputs[0]][0], postprocess.to_mask(scores, kind))
        seen.append(want.uncertain)
    assert 0.0 < max(seen) < 1.0  # the test means something: neither all sure nor none
    bad = x[0].copy()
    bad[0, 1, 5, 5] = np.nan  # NaN scores around that pixel: a NaN margin, no figures
    pair = both.create_infer_request().infer({0: bad})[both.outputs[at]]
    assert np.isnan(pair[1])
    assert frame_figures(plain.create_infer_request().infer({0: bad})[0], kind) is None


class _Without2022:
    """An ov.Model as OpenVINO 2022.3 (the MYRIAD lane) shows it: no ``add_results``."""

    def __init__(self, model) -> None:
        self._model = model

    def __getattr__(self, name):
        if name == "add_results":
            raise AttributeError(name)
        return getattr(self._model, name)


def test_frame_quality_without_add_results_as_on_2022_3():
    """2022.3 has no Model.add_results (found on the rig's MYRIAD host: the agent exited at
    start); the figures then come from a new Model with one more result."""
    assert not hasattr(_Without2022(_scores_model(2, False, 0.7)), "add_results")
    model = ovcompat.append_frame_quality(_Without2022(_scores_model(2, False, 0.7)), 0,
                                          "logits", 0.9)
    model = ovcompat.append_class_decision(model, 0, "logits")
    compiled = ovcompat.new_core().compile_model(model, "CPU",
                                                 {"INFERENCE_PRECISION_HINT": "f32"})
    frame = np.random.default_rng(3).standard_normal((1, 3, 12, 16)).astype(np.float32)
    got = compiled.create_infer_request().infer({0: frame})
    pair = got[compiled.outputs[ovcompat.output_index(compiled, ovcompat.QUALITY_OUTPUT)]]
    assert pair.shape == (2,) and 0.0 <= float(pair[0]) <= 1.0


def test_engine_passes_the_graph_figures_to_its_callback(tmp_path):
    """A real tiny IR through the Engine's own steps: the figures come with each class map
    and equal numpy's on the scores of the same frame."""
    bundle = make_tiny_bundle(tmp_path, targets=("cpu",))
    rng = np.random.default_rng(5)
    frames = [rng.integers(90, 160, (64, 64, 3)).astype(np.uint8) for _ in range(3)]
    ref_got, got = {}, {}
    ref = _engine(bundle, False, ref_got)
    _run(ref, frames, resize_in_graph=False)
    engine = Engine(ModelConfig(bundle=str(bundle), devices=["CPU"]),
                    OpenedBundle.open(str(bundle), "cpu"))
    engine.load()
    engine.start(lambda i, out, fig: got.__setitem__(i, (out, fig)), decide=True, quality=0.9)
    _run(engine, frames, resize_in_graph=False)
    for i in range(len(frames)):
        classes, fig = got[i]
        want = frame_figures(ref_got[i], "logits", 0.9)
        assert classes.dtype == np.uint8 and fig is not None
        assert abs(fig.uncertain - want.uncertain) < 1e-3 and abs(fig.margin - want.margin) < 1e-3
        assert 0.0 < want.uncertain < 1.0


def test_classes_kind_refuses_scores_and_upsampling():
    with pytest.raises(ValueError):
        postprocess.to_mask(np.zeros((1, 2, 4, 4), np.float32), "classes")
    with pytest.raises(ValueError):
        postprocess.to_frame_mask(np.zeros((1, 4, 4), np.uint8), "classes", (8, 8))


def _blocks(h: int, w: int) -> np.ndarray:
    """Big red and blue blocks (BGR): the tiny model's mask is red = pet."""
    frame = np.zeros((h, w, 3), np.uint8)
    frame[:, : w // 2, 2] = 200  # red left half
    frame[:, w // 2:, 0] = 200  # blue right half
    frame[: h // 3, :, :] = (0, 0, 180)  # red top band
    return frame


def _run(engine: Engine, frames, resize_in_graph: bool) -> None:
    engine.resize_in_graph = resize_in_graph
    for i, frame in enumerate(frames):
        engine.submit(preprocess.to_model_input(frame, None if resize_in_graph
                                                else engine.size_hw), i)
    engine.drain()


def _engine(bundle, decide: bool, got):
    return started_engine(bundle, got, decide)


def test_engine_resizes_in_graph_per_frame_size_bounded(tmp_path):
    bundle = make_tiny_bundle(tmp_path, targets=("cpu",))
    sizes = [(64, 64), (96, 128), (40, 50), (140, 200), (64, 80), (96, 128)]
    frames = [_blocks(h, w) for h, w in sizes]
    ref_got, new_got = {}, {}
    ref = _engine(bundle, False, ref_got)
    _run(ref, frames, resize_in_graph=False)
    new = _engine(bundle, True, new_got)
    _run(new, frames, resize_in_graph=True)
    assert len(new._variants) <= MAX_SIZES
    # static for the first STATIC_SIZES sizes (96x128, 40x50, 140x200), then any size per
    # box factor (64x80: box 1), least recently used dropped: not one per size forever
    assert STATIC_SIZES == 3
    t = "throughput"
    assert set(new._variants) == {("size", (40, 50), True, t), ("size", (140, 200), True, t),
                                  ("any", 1, True, t), ("size", (96, 128), True, t)}
    assert new.result_kind == "classes" and ref.result_kind == "logits"
    for i, (h, w) in enumerate(sizes):
        want = postprocess.to_mask(ref_got[i], ref.result_kind)
        mask = postprocess.to_mask(new_got[i], new.result_kind)
        assert mask.shape == want.shape == (64, 64)
        if (h, w) == (64, 64):
            assert np.array_equal(mask, want)  # no resize: exactly the Python path
        else:  # one resize rule; the graph rounds once more (one grey level at most)
            assert np.mean(mask == want) > 0.99
            assert 0.3 < mask.mean() < 0.9


def test_engine_without_graph_resize_still_takes_any_frame(tmp_path):
    bundle = make_tiny_bundle(tmp_path, targets=("cpu",))
    got = {}
    engine = _engine(bundle, False, got)
    engine.resize_in_graph = False
    engine.submit(_blocks(96, 128)[np.newaxis], 0)  # wrong size: resized in Python
    engine.drain()
    assert got[0].shape == (1, 2, 64, 64)


def test_binary_coverage_fast_path_matches_bincount():
    rng = np.random.default_rng(3)
    for mask in (rng.integers(0, 2, (37, 41)).astype(np.uint8),
                 rng.integers(0, 4, (8, 9)).astype(np.uint8),  # stray values: not counted
                 np.zeros((5, 5), np.uint8), np.ones((5, 5), np.uint8)):
        counts = np.bincount(mask.ravel(), minlength=2)[:2]
        assert postprocess.coverage(mask, 2) == [round(float(c) / mask.size, 6) for c in counts]


@pytest.mark.parametrize("frame_hw", [(375, 500), (480, 640), (200, 300), (600, 513),
                                      (720, 1280), (1080, 1920)])
def test_graph_resize_is_model_resize(frame_hw):
    """The rule the build trains on (preprocess.model_resize) is what the graph computes."""
    from openvino import Model, Type
    from openvino import opset8 as ops

    from edge_agent.inference import ovcompat

    param = ops.parameter([1, 3, 256, 256], Type.f32, name="image")
    model = Model([ops.relu(param)], [param], "identity")
    shrink = preprocess.shrink_factor(frame_hw, (256, 256))
    assert shrink == (1 if frame_hw[0] < 512 or frame_hw[1] < 512 else
                      min(frame_hw[0] // 256, frame_hw[1] // 256))
    model = ovcompat.add_preprocessing(model, "image", "BGR", frame_hw=frame_hw,
                                       shrink=shrink)
    compiled = ovcompat.new_core().compile_model(model, "CPU",
                                                 {"INFERENCE_PRECISION_HINT": "f32"})
    frame = np.random.default_rng(sum(frame_hw)).integers(0, 256, (*frame_hw, 3), np.uint8)
    got = compiled({0: frame[np.newaxis]})[0][0].transpose(1, 2, 0)
    want = preprocess.model_resize(frame, (256, 256)).astype(np.float32)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1.0 and np.abs(got - want).mean() < 0.3


def test_engine_without_dynamic_shapes_compiles_per_size_bounded(tmp_path):
    """A device that cannot compile a dynamic input (NPU, MYRIAD) gets one variant per
    frame size, least recently used dropped."""
    bundle = make_tiny_bundle(tmp_path, targets=("cpu",))
    got = {}
    engine = _engine(bundle, True, got)
    engine._dynamic = False
    sizes = [(96, 128), (40, 50), (140, 200), (64, 80), (90, 90), (96, 128)]
    _run(engine, [_blocks(h, w) for h, w in sizes], resize_in_graph=True)
    assert len(engine._variants) <= MAX_SIZES
    assert all(k[0] in ("size", "model") for k in engine._variants)
    assert sorted(got) == list(range(len(sizes)))


def test_a_device_that_cannot_compile_the_figures_runs_without_them(tmp_path, monkeypatch):
    """A plugin lacking an op of the figures (an old MYRIAD, say) must not stop the agent:
    the class map still comes, without figures, and the pipeline then computes none."""
    bundle = make_tiny_bundle(tmp_path, targets=("cpu",))
    engine = Engine(ModelConfig(bundle=str(bundle), devices=["CPU"]),
                    OpenedBundle.open(str(bundle), "cpu"))
    engine.load()
    real = ovcompat.compile_model

    def picky(core, model, device, config):
        if any(ovcompat.QUALITY_OUTPUT in o.get_names() for o in model.outputs):
            raise RuntimeError("Cannot create ReduceMean layer: unsupported")
        return real(core, model, device, config)

    monkeypatch.setattr(ovcompat, "compile_model", picky)
    got = {}
    engine.start(lambda i, out, fig: got.__setitem__(i, (out, fig)), decide=True, quality=0.9)
    assert engine.quality is None
    _run(engine, [_blocks(64, 64)], resize_in_graph=False)
    assert got[0][0].dtype == np.uint8 and got[0][1] is None
