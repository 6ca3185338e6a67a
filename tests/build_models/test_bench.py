"""Smoke test of benchmarks/bench_infer.py: structure of its output, not speed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.build
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_infer.py"


def test_bench_writes_json_and_chart(tmp_path, pets_dir):
    pytest.importorskip("nncf")
    spec = importlib.util.spec_from_file_location("bench_infer", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    bench.main(["--preset", "mobile", "--size", "64", "--data", str(pets_dir), "--images", "2",
                "--iterations", "3", "--warmup", "1", "--rounds", "3", "--calib", "2",
                "--out", str(out)])
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"torch eager FP32", "TorchScript FP32",
                                      "torch bf16 autocast", "OV FP32 (f32)",
                                      "OV FP32 (default)", "OV FP16 IR (f32)", "OV INT8"}
    for result in report["results"].values():
        assert result["fps"] > 0 and result["latency_ms_p50"] > 0 and result["iterations"] == 3
    assert report["results"]["OV FP32 (f32)"]["inference_precision"] == "f32"
    assert set(report["ratios"]["OV INT8"]) == {"fps_vs_torch", "latency_speedup_vs_torch"}
    assert report["results"]["torch bf16 autocast"]["inference_precision"] == "bf16"
    # every variant is scored on the same test images; the traced and frozen TorchScript
    # computes what eager does, so their scores agree
    scores = {name: r["accuracy"] for name, r in report["results"].items()}
    assert all(0.0 <= s["dice"] <= 1.0 and s["images"] >= 1 for s in scores.values())
    assert scores["TorchScript FP32"]["dice"] == pytest.approx(
        scores["torch eager FP32"]["dice"], abs=1e-3)
    assert out.with_suffix(".png").is_file()
