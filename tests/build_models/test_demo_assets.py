"""The committed demo bundle verifies (no torch) and the demo clip reads back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent import manifest as mf

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
    schema = json.loads((DEMO.parent / "edge_agent/schemas/manifest.schema.json").read_text())
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
