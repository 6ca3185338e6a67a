"""``segedge-build finetune``: bundle N + corrected device samples -> N+1, compared with N.

The samples are written by the agent's own sampler (edge_agent.quality.samples) from
synthetic pets with a wrong pre-label, then "corrected" (the true trimap saved over it),
as a person would in an image editor; one is left uncorrected.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from edge_agent.bundle import manifest as mf
from tests.build_models.pets import synthetic_pet

pytest.importorskip("PIL")
CORRECTED, UNCORRECTED = 6, 1


def write_field_samples(root: Path, camera: str = "cam-1", seed: int = 5) -> Path:
    """Samples as the device writes them; the first CORRECTED get their true trimap."""
    from PIL import Image

    from edge_agent.config import SamplesConfig
    from edge_agent.health.stats import Counters
    from edge_agent.quality import samples as S

    store = S.SampleStore(str(root), camera, SamplesConfig(), Counters(S.COUNTERS))
    rng = np.random.default_rng(seed)
    truth = {}
    for i in range(CORRECTED + UNCORRECTED):
        image, trimap = synthetic_pet(rng, 96, 80)
        guess = np.roll(trimap == 1, 20, axis=1).astype(np.uint8)  # the model was off
        name = S.sample_name(camera, 1.8e9 + i, i)
        assert store.write(S.Sample(name, image[..., ::-1], guess, None,
                                    {"camera_id": camera, "frame_id": i, "reason": "uncertain"}))
        truth[name] = trimap
    for name in sorted(truth)[:CORRECTED]:
        Image.fromarray(truth[name]).save(root / camera / "annotations/trimaps" / f"{name}.png")
    return root


def test_samples_are_read_with_a_held_out_share_and_uncorrected_ones_left_out(tmp_path):
    from build_models import finetune as F

    root = write_field_samples(tmp_path / "collected" / "dev-a")
    (tmp_path / "collected" / "dev-b").mkdir()
    folders = F.sample_folders(tmp_path / "collected")
    assert folders == [root / "cam-1"]
    got = F.read_samples(folders[0], holdout_every=5, uncorrected=False)
    assert (len(got.train), len(got.held_out), got.uncorrected) == (5, 1, 1)
    assert got.held_out[0].name == sorted(p.name for p in got.train + got.held_out)[4]
    everything = F.read_samples(folders[0], holdout_every=0, uncorrected=True)
    assert len(everything.train) == 7 and not everything.held_out
    staged = F.stage_pairs(got.train, tmp_path / "staged")
    from build_models import data

    assert len(data.scan_split(staged, "trainval").pairs) == 5


@pytest.mark.parametrize("version, bump, expected", [
    ("0.0.1", "patch", "0.0.2"), ("1.9.9", "patch", "1.9.10"), ("1.2.3", "minor", "1.3.0")])
def test_the_next_version_bumps_the_patch_or_the_minor(version, bump, expected):
    from build_models.finetune import next_version

    assert next_version(version, bump) == expected
    assert next_version("2026.11.25-113000") > "2026.11.25-113000"


def test_a_checkpoint_that_is_not_the_bundles_is_refused_in_one_line(tmp_path, capsys):
    from build_models import cli
    from tests.helpers.tiny_bundle import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path / "models", version="0.0.1", targets=("cpu",))
    other = tmp_path / "other.pt"
    other.write_bytes(b"not the one")
    argv = ["finetune", "--from", str(bundle), "--data", str(tmp_path), "--samples",
            str(tmp_path), "--out", str(tmp_path / "out")]
    assert cli.main(argv + ["--checkpoint", str(other)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not the checkpoint of" in err[0] and "refused" in err[0]
    assert cli.main(argv) == 1  # none beside it, none recorded
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pass --checkpoint" in err[0]


@pytest.mark.build
def test_finetune_makes_n_plus_1_that_names_its_parent_and_compares(tiny_build, tmp_path):
    pytest.importorskip("torch")
    from build_models import cli

    samples = write_field_samples(tmp_path / "collected" / "dev-a")
    out, run = tmp_path / "models", tmp_path / "run"
    parent = tiny_build["bundle"]
    argv = ["finetune", "--from", str(parent), "--data", str(tiny_build["data"]),
            "--samples", str(samples.parent), "--out", str(out), "--run-dir", str(run),
            "--checkpoint", str(tiny_build["checkpoint"]), "--epochs", "2",
            "--targets", "cpu", "--calib-size", "8", "--tolerance", "0.2", "--overlays", "1",
            "--speed-iterations", "0", "--no-progress", "--", "--batch-size", "6",
            "--threads", "2"]
    assert cli.main(argv) == 0
    child = out / "tiny" / "0.0.2"
    assert mf.verify_bundle(child) == []
    man = mf.load_manifest(child)
    src = man.source_checkpoint
    assert src["parent"] == {"name": "tiny", "version": "0.0.1",
                             "checkpoint_sha256": mf.sha256_file(tiny_build["checkpoint"])}
    assert (src["finetune"]["trained_on"], src["finetune"]["held_out"]) == (5, 1)
    assert src["finetune"]["samples"][0]["uncorrected_skipped"] == 1
    assert src["kept"] == "checkpoint.pt"
    assert mf.sha256_file(child / "checkpoint.pt") == src["sha256"]
    listed = {f.path for f in man.files}
    assert {"checkpoint.pt", "report/finetune.json", "report/finetune.png",
            "report/finetune.md"} <= listed
    report = json.loads((child / "report" / "finetune.json").read_text())
    rows = report["comparison"]
    assert set(rows) == {"test", "held-out samples"}
    assert rows["test"]["images"] == 6 and rows["held-out samples"]["images"] == 1
    for row in rows.values():
        for key in ("parent", "child"):
            assert 0.0 <= row[key]["dice"] <= 1.0
    assert "| held-out samples | 1 |" in (child / "report" / "finetune.md").read_text()
    meta = json.loads((run / "report.json").read_text())["meta"]
    assert meta["train_images"] == 18 + 5  # the original training split plus the samples
    assert meta["train_config"]["init_from"] == str(tiny_build["checkpoint"])

    # N+2 from N+1 without --checkpoint: the kept checkpoint.pt, checked by its sha256
    argv2 = [a for a in argv if a not in ("--checkpoint", str(tiny_build["checkpoint"]))]
    argv2[argv2.index("--from") + 1] = str(child)
    argv2[argv2.index("--run-dir") + 1] = str(tmp_path / "run2")
    argv2[argv2.index("--epochs") + 1] = "1"
    assert cli.main(argv2) == 0
    grand = mf.load_manifest(out / "tiny" / "0.0.3")
    assert grand.source_checkpoint["parent"]["version"] == "0.0.2"
    assert hashlib.sha256((child / "checkpoint.pt").read_bytes()).hexdigest() == \
        grand.source_checkpoint["parent"]["checkpoint_sha256"]
