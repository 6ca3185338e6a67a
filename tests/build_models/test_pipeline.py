"""End to end: synthetic Pets -> train a few steps at 64x64 -> all targets -> INT8 -> verified."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.bundle import manifest as mf

pytestmark = pytest.mark.build
REPO = Path(__file__).resolve().parents[2]


def test_all_builds_a_verified_bundle_with_every_target(tiny_build):
    bundle = tiny_build["bundle"]
    manifest = mf.load_manifest(bundle)
    assert sorted(manifest.targets) == ["cpu", "gpu", "myriad", "npu"]
    assert {t: e.precision for t, e in manifest.targets.items()} == {
        "cpu": "INT8", "gpu": "FP16", "npu": "INT8", "myriad": "FP32"}
    assert mf.verify_bundle(bundle) == []
    for name in ("accuracy.png", "overlays.png", "training_curves.png", "speed.png",
                 "report.json", "reference.png", "reference.json"):
        assert (bundle / "report" / name).is_file(), name
    # the quality reference: val and test through the agent's graph (build_models.reference)
    assert manifest.schema_version == 2 and manifest.reference["target"] == "cpu"
    assert {s: len(v["uncertain"]) for s, v in manifest.reference["splits"].items()} == {
        "val": 2, "test": 6}
    listed = {f.path for f in manifest.files}
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert listed == on_disk - {"manifest.json"}
    assert manifest.input.name == "image" and manifest.input.shape == [1, 3, 64, 64]
    assert manifest.input.normalization == "inside_model" and manifest.input.color_order == "RGB"
    assert manifest.input.mean is None and manifest.input.std is None
    assert manifest.output.name == "logits" and manifest.output.shape == [1, 1, 64, 64]
    assert manifest.classes == ["background", "pet"]
    assert set(manifest.tools) >= {"torch", "openvino", "nncf", "segmentation_models_pytorch",
                                   "segedge"}
    assert manifest.source_checkpoint["sha256"] == mf.sha256_file(tiny_build["checkpoint"])
    assert manifest.evaluation["split"] == "test" and manifest.evaluation["images"] == 6
    for precision in ("FP32", "FP16", "INT8"):
        scores = manifest.evaluation["metrics"][precision]
        assert 0 <= scores["dice"] <= 1 and scores["inference_precision"] == "f32"
    for entry in manifest.targets.values():
        assert {"dice", "fg_iou", "inference_precision", "split", "images"} <= set(entry.accuracy)
    assert not list(bundle.parent.glob(".*.partial"))
    speed = json.loads((bundle / "report" / "report.json").read_text())["speed"]
    assert set(speed) == {"FP32", "FP16", "INT8"}
    assert all(s["fps"] > 0 and s["inference_precision"] == "f32" for s in speed.values())


def test_manifest_validates_against_json_schema(tiny_build):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((REPO / "edge_agent/protocol/schemas/manifest.schema.json").read_text())
    data = json.loads((tiny_build["bundle"] / "manifest.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(data)
    data["targets"]["cpu"]["files"][0]["sha256"] = "nothex"
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(data))


def test_checkpoint_carries_full_metadata(tiny_build):
    from build_models import checkpoint

    meta = checkpoint.load(tiny_build["checkpoint"]).meta
    assert meta.preset == "mobile" and meta.size == 64
    assert meta.classes == ["background", "pet"] and len(meta.model.mean) == 3
    assert len(meta.data_hash) == 64 and meta.code_version.startswith("0.")
    report = json.loads((tiny_build["run"] / "report.json").read_text())
    assert report["epochs_run"] == 3 and len(report["history"]) == 3
    assert (tiny_build["run"] / "curves.png").is_file()


def test_resume_continues_from_last_checkpoint(tiny_build, tmp_path):
    from build_models import train

    report = train.main(["--data", str(tiny_build["data"]), "--out", str(tmp_path),
                         "--resume", str(tiny_build["run"] / "last.pt"), "--epochs", "4",
                         "--batch-size", "6", "--no-progress"])
    assert report["epochs_run"] == 4
    assert [h["epoch"] for h in report["history"]] == [1, 2, 3, 4]


def test_ir_outputs_agree_with_torch(tiny_build):
    from build_models import data as D
    from build_models import evaluate as E
    from build_models import export as X
    from build_models.checkpoint import model_from_checkpoint

    model, meta = model_from_checkpoint(tiny_build["checkpoint"])
    test = D.PetData(D.scan_split(tiny_build["data"], "test").pairs, meta.size)
    images = np.concatenate([b for b, _ in test.batches(6)])
    fp32, used = E.compile_ov(X.to_openvino(model, meta.size), "f32")
    fp16, used16 = E.compile_ov(tiny_build["bundle"] / "gpu" / "model.xml", "f32")
    assert used == used16 == "f32"
    for compiled in (fp32, fp16):
        assert X.parity(model, compiled, images)["agreement"] >= 0.99
    int8, _ = E.compile_ov(tiny_build["bundle"] / "cpu" / "model.xml", "f32")
    assert X.parity(model, int8, images)["agreement"] >= 0.9


def test_myriad_onnx_is_opset_13_or_less_and_static(tiny_build):
    from build_models.export import onnx_info

    info = onnx_info(tiny_build["bundle"] / "myriad" / "model.onnx")
    assert info["opset"] <= 13 and info["static"]
    assert info["inputs"] == {"image": [1, 3, 64, 64]}
    assert info["outputs"] == {"logits": [1, 1, 64, 64]}


def test_tampered_file_fails_verify(tiny_build, tmp_path, capsys):
    from build_models import cli

    bundle = Path(shutil.copytree(tiny_build["bundle"], tmp_path / "b"))
    assert cli.main(["verify", str(bundle)]) == 0
    blob = bytearray((bundle / "cpu" / "model.bin").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (bundle / "cpu" / "model.bin").write_bytes(bytes(blob))
    assert cli.main(["verify", str(bundle)]) == 1
    assert "cpu/model.bin: sha256 mismatch" in capsys.readouterr().err


def test_verify_needs_no_torch(tiny_build):
    # an agent-only install: no torch, nncf, smp, Pillow or tqdm
    code = ("import sys\n"
            "for m in ('torch', 'nncf', 'segmentation_models_pytorch', 'PIL', 'tqdm'):\n"
            "    sys.modules[m] = None\n"
            "from build_models.verify import verify\n"
            "from build_models.cli import main\n"
            f"r = verify({str(tiny_build['bundle'])!r})\n"
            "assert r['ok'], r['problems']\n"
            "assert sorted(r['targets_run']) == ['cpu', 'gpu', 'myriad', 'npu']\n"
            f"assert main(['verify', {str(tiny_build['bundle'])!r}]) == 0\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


def test_int8_gate_failure_exits_nonzero_saying_by_how_much(tiny_build, tmp_path, capsys):
    from build_models import cli

    rc = cli.main(["export", "--checkpoint", str(tiny_build["checkpoint"]),
                   "--data", str(tiny_build["data"]), "--out", str(tmp_path), "--targets", "cpu",
                   "--calib-size", "4", "--tolerance", "-1", "--no-accuracy-control",
                   "--version", "x", "--speed-iterations", "0", "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "INT8 accuracy gate failed" in err and "below FP32" in err and "tolerance -1" in err
    assert not (tmp_path / "pets-mobile" / "x").exists()


def test_targets_are_selectable(tiny_build, tmp_path):
    from build_models import bundle

    report = bundle.main(["--checkpoint", str(tiny_build["checkpoint"]),
                          "--data", str(tiny_build["data"]), "--out", str(tmp_path),
                          "--targets", "gpu", "--name", "g", "--version", "1",
                          "--speed-iterations", "0", "--no-progress"])
    manifest = mf.load_manifest(Path(report["bundle"]))
    assert list(manifest.targets) == ["gpu"]
    assert sorted(manifest.evaluation["metrics"]) == ["FP16", "FP32"]


def test_trimap_mode_trains_three_classes(pets_dir, tmp_path):
    from build_models import train

    report = train.main(["--data", str(pets_dir), "--out", str(tmp_path), "--size", "64",
                         "--label-mode", "trimap", "--epochs", "1", "--max-steps", "1",
                         "--limit", "4", "--batch-size", "4", "--no-progress"])
    assert report["meta"]["classes"] == ["background", "pet", "border"]
    assert report["stopped_by"] == "max_steps" and report["steps"] == 1


def test_failed_gate_retries_with_accuracy_control_then_says_by_how_much(
        tiny_build, tmp_path, monkeypatch):
    from build_models import bundle
    from build_models import quantize as Q

    calls = []

    def fake_accuracy_control(ov_model, calib, validation, score, cfg):
        calls.append(cfg.tolerance)
        return ov_model, {"method": "accuracy_control", "calibration_images": 0}

    monkeypatch.setattr(Q, "quantize_accuracy_control", fake_accuracy_control)
    with pytest.raises(bundle.BuildError, match=r"below FP32 .*method accuracy_control"):
        bundle.main(["--checkpoint", str(tiny_build["checkpoint"]), "--data",
                     str(tiny_build["data"]), "--out", str(tmp_path), "--targets", "cpu",
                     "--calib-size", "4", "--tolerance", "-1", "--speed-iterations", "0",
                     "--no-progress"])
    assert calls == [-1.0]


def test_accuracy_control_runs_with_nncf(tiny_build):
    import openvino as ov

    from build_models import data as D
    from build_models import export as X
    from build_models import quantize as Q
    from build_models.checkpoint import model_from_checkpoint

    model, meta = model_from_checkpoint(tiny_build["checkpoint"])
    pairs = D.scan_split(tiny_build["data"], "test").pairs
    data = D.PetData(pairs, meta.size)
    int8, info = Q.quantize_accuracy_control(
        X.to_openvino(model, meta.size), data, data,
        lambda compiled, items: Q.dice_of_items(compiled, items, 2),
        Q.QuantConfig(subset_size=4, tolerance=1.0))
    assert info["method"] == "accuracy_control" and info["validation_images"] == 6
    assert isinstance(int8, ov.Model)


def test_recipe_options_train_and_resume_with_ema(pets_dir, tmp_path):
    """EMA, extra data, background mixing, focal loss and warm restarts; best.pt holds the
    EMA weights and --resume continues the raw weights, the EMA and the history."""
    import torch

    from build_models import checkpoint, train
    from build_models import data as D

    args = ["--data", str(pets_dir), "--out", str(tmp_path), "--size", "64", "--epochs", "2",
            "--batch-size", "6", "--ema", "0.9", "--extra-data", str(pets_dir),
            "--background-mix", "0.5", "--loss", "dice_focal", "--warmup", "0.2",
            "--restarts", "1", "--threads", "2", "--device", "cpu", "--no-progress"]
    report = train.main(args)
    n_train = len(D.read_split(pets_dir, "train")) + len(D.read_split(pets_dir, "trainval"))
    assert report["meta"]["train_images"] == n_train
    assert report["meta"]["extra_data"] == [str(pets_dir)]
    assert report["meta"]["augment"]["background_mix"] == 0.5
    last = checkpoint.load(tmp_path / "last.pt")
    assert last.ema_updates == report["steps"] > 0
    ema, raw = last.state_dict, last.train_state_dict
    assert any(not torch.equal(ema[k], raw[k]) for k in ema if ema[k].is_floating_point())
    args[args.index("--epochs") + 1] = "3"
    resumed = train.main([*args, "--resume", str(tmp_path / "last.pt")])
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    assert checkpoint.load(tmp_path / "last.pt").ema_updates == resumed["steps"]


def test_export_writes_the_model_repository(tiny_build):
    """OUT/repository/<target>/: the IR targets (not myriad's ONNX), version 1 (0.0.1),
    the served model's class map equal to the agent's local graph on the same frames."""
    from tests.build_models.test_repository import assert_served_equals_local

    repo = tiny_build["work"] / "models" / "repository"
    assert sorted(p.name for p in repo.iterdir()) == ["cpu", "gpu", "npu"]
    for target in ("cpu", "gpu", "npu"):
        assert (repo / target / "tiny" / "1" / "model.xml").is_file()
        assert json.loads((repo / target / "config.json").read_text())[
            "model_config_list"][0]["config"]["target_device"] == target.upper()
    assert_served_equals_local(tiny_build["bundle"], repo / "cpu" / "tiny" / "1", "cpu")
