"""The committed demo bundle verifies (no torch) and the demo clip reads back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.bundle import manifest as mf

DEMO = Path(__file__).resolve().parents[2] / "demo"
BUNDLES = sorted(p.parent for p in DEMO.glob("models/*/*/manifest.json"))


def test_there_is_a_demo_bundle_under_30_mb_with_a_cpu_target():
    assert BUNDLES, "no demo/models/<name>/<version>/manifest.json"
    for bundle in BUNDLES:
        assert "cpu" in mf.load_manifest(bundle).targets
        assert sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) <= 30 * 2**20


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_demo_bundle_verifies_and_validates(bundle):
    from build_models.verify import verify

    result = verify(bundle)
    assert result["ok"], result["problems"]
    assert result["warnings"] == []
    jsonschema = pytest.importorskip("jsonschema")
    schema_path = DEMO.parent / "edge_agent/protocol/schemas/manifest.schema.json"
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(json.loads((bundle / "manifest.json").read_text()), schema)
    evaluation = mf.load_manifest(bundle).evaluation
    assert evaluation["images"] == 97 and set(evaluation["metrics"]) == {"FP32", "FP16", "INT8"}


def test_demo_clip_reads_back_with_opencv():
    cv2 = pytest.importorskip("cv2")
    clip = DEMO / "clip.mp4"
    assert clip.stat().st_size <= 3 * 2**20
    cap = cv2.VideoCapture(str(clip))
    frames = 0
    ok, frame = cap.read()
    shape = frame.shape if ok else None
    while ok:
        frames += 1
        ok, _ = cap.read()
    cap.release()
    assert shape == (480, 640, 3) and frames >= 120


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_demo_bundle_meets_the_accuracy_goal_it_records(bundle):
    """The figures measured when the bundle was built (97 test images, f32): Dice >= 0.92,
    pet IoU >= 0.80, INT8 within 0.005 of FP32; the report carries the candidates chart."""
    metrics = mf.load_manifest(bundle).evaluation["metrics"]
    for precision in ("FP32", "INT8"):
        assert metrics[precision]["inference_precision"] == "f32"
        assert metrics[precision]["dice"] >= 0.92 and metrics[precision]["fg_iou"] >= 0.80
    assert abs(metrics["INT8"]["dice"] - metrics["FP32"]["dice"]) <= 0.005
    candidates = json.loads((bundle / "report" / "candidates.json").read_text())
    assert candidates["chosen"] in candidates["candidates"]
    assert (bundle / "report" / "candidates.png").stat().st_size > 5000


def test_the_demo_model_meets_the_goals_the_project_set():
    """The bundle the demo runs meets issue 19's goals on the 97 test images (f32, FP32 and
    INT8): pixel accuracy (the origin's micro Dice) >= 0.955 and pet IoU >= 0.89, INT8 within
    -0.005 of FP32. 3.1.0 missed the first by 0.0003; a new demo bundle must not fall back."""
    from tools.demo import find_bundle

    metrics = mf.load_manifest(find_bundle(DEMO / "models")).evaluation["metrics"]
    for precision in ("FP32", "INT8"):
        assert metrics[precision]["dice"] >= 0.955, (precision, metrics[precision])
        assert metrics[precision]["fg_iou"] >= 0.89, (precision, metrics[precision])
    assert metrics["INT8"]["dice"] - metrics["FP32"]["dice"] >= -0.005


def test_model_card_figures_are_the_bundles():
    """demo/README.md's f32 accuracy rows say what the committed manifest says (pet IoU and
    pet Dice first, pixel accuracy beside)."""
    card = (DEMO / "README.md").read_text()
    for bundle in BUNDLES:
        assert f"## models/{bundle.parent.name}/{bundle.name}" in card
        metrics = mf.load_manifest(bundle).evaluation["metrics"]
        for precision, row in (("FP32", "| FP32 IR | f32"), ("FP16", "| FP16 IR (`gpu`) | f32"),
                               ("INT8", "| INT8 IR (`cpu`, `npu`) | f32")):
            line = next(ln for ln in card.splitlines() if ln.startswith(row))
            m = metrics[precision]
            assert f"| {m['fg_iou']:.4f} | {m['fg_dice']:.4f} | {m['dice']:.4f} |" in line, line
