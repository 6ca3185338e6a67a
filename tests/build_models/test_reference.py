"""``segedge-build reference``: the quality reference of a built bundle, measured through the
agent's own Engine, written into the manifest (schema_version 2) and the report."""

from __future__ import annotations

import json
import shutil

import pytest

from build_models import cli, reference
from build_models.errors import BundleError
from edge_agent.bundle import manifest as mf


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    return copy


def test_reference_is_measured_written_and_verified(bundle, pets_dir):
    pytest.importorskip("matplotlib")
    ref = reference.add_reference(bundle, pets_dir)
    manifest = mf.load_manifest(bundle)
    assert manifest.schema_version == 2 and manifest.reference == ref
    assert set(ref["splits"]) == {"val", "test"} and ref["target"] == "cpu"
    assert ref["threshold"] == 0.9 and ref["statistic"] == "uncertain"
    assert len(ref["splits"]["val"]["uncertain"]) == 2  # every 10th of 20 trainval lines
    assert len(ref["splits"]["test"]["margin"]) == 6
    for split in ref["splits"].values():
        assert len({len(v) for v in split.values()}) == 1
        assert all(0.0 <= x <= 1.0 for v in split.values() for x in v)
    assert (bundle / "report" / "reference.png").stat().st_size > 5000
    summary = json.loads((bundle / "report" / "reference.json").read_text())
    assert summary["test"]["images"] == 6
    assert {"report/reference.png", "report/reference.json"} <= {f.path for f in manifest.files}
    assert mf.verify_bundle(bundle) == []
    # the figures are the agent's: the Engine on the same images gives the same numbers
    again = reference.measure(bundle, reference.read_frames(
        reference.split_images(pets_dir, "test")), 0.9)
    assert [round(x, 6) for x in again["uncertain"]] == ref["splits"]["test"]["uncertain"]


def test_the_command_adds_a_reference_and_a_second_run_replaces_it(bundle, pets_dir, capsys):
    pytest.importorskip("matplotlib")
    assert cli.main(["reference", "--bundle", str(bundle), "--data", str(pets_dir),
                     "--threshold", "0.8", "--limit", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reference"]["threshold"] == 0.8 and out["reference"]["test"]["images"] == 3
    assert cli.main(["reference", "--bundle", str(bundle), "--data", str(pets_dir)]) == 0
    manifest = mf.load_manifest(bundle)
    assert manifest.reference["threshold"] == 0.9
    assert [f.path for f in manifest.files].count("report/reference.png") == 1
    assert mf.verify_bundle(bundle) == []


def test_a_bundle_that_does_not_verify_gets_no_reference(bundle, pets_dir):
    (bundle / "cpu" / "model.bin").write_bytes(b"tampered")
    before = (bundle / mf.MANIFEST_NAME).read_text()
    with pytest.raises(BundleError, match="does not verify"):
        reference.add_reference(bundle, pets_dir)
    assert (bundle / mf.MANIFEST_NAME).read_text() == before  # nothing re-hashed


def test_a_bad_threshold_is_refused(bundle, pets_dir, capsys):
    assert cli.main(["reference", "--bundle", str(bundle), "--data", str(pets_dir),
                     "--threshold", "1.0"]) == 1
    assert "--threshold" in capsys.readouterr().err
