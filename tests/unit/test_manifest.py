"""The shared bundle module: what a consumer accepts and what it refuses, and why."""

from __future__ import annotations

import json
import shutil

import pytest

from edge_agent import manifest as mf


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    return copy


def test_good_bundle_verifies_and_opens(bundle):
    assert mf.verify_bundle(bundle) == []
    manifest, target, model = mf.open_target(bundle, "cpu")
    assert manifest.schema_version == mf.SCHEMA_VERSION
    assert target.device == "CPU" and model.name == "model.xml" and model.is_file()
    assert manifest.input.shape == [1, 3, 64, 64]


def test_round_trip_keeps_every_field(bundle):
    manifest = mf.load_manifest(bundle)
    again = mf.parse_manifest(json.loads(json.dumps(manifest.to_dict())))
    assert again == manifest


def test_tampered_weights_are_refused_with_the_file_named(bundle):
    weights = bundle / "cpu" / "model.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    weights.write_bytes(bytes(data))
    problems = mf.verify_bundle(bundle)
    assert len(problems) == 1 and "cpu/model.bin" in problems[0] and "sha256" in problems[0]
    with pytest.raises(mf.BundleError, match="cpu/model.bin"):
        mf.open_target(bundle, "cpu")
    # the other targets are untouched and still usable
    assert mf.verify_bundle(bundle, targets=["gpu"]) == []


def test_truncated_and_missing_files_are_named(bundle):
    (bundle / "gpu" / "model.bin").write_bytes(b"")
    (bundle / "npu" / "model.xml").unlink()
    problems = "\n".join(mf.verify_bundle(bundle))
    assert "gpu/model.bin: size 0" in problems
    assert "npu/model.xml: missing" in problems


def test_missing_target_lists_what_was_built(bundle):
    with pytest.raises(mf.BundleError, match=r"no target 'myriad' \(built: cpu, gpu, npu\)"):
        mf.open_target(bundle, "myriad")
    assert "no target 'myriad'" in mf.verify_bundle(bundle, targets=["myriad"])[0]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(schema_version=2), "schema_version 2 is not supported"),
        (lambda d: d.pop("classes"), "missing key 'classes'"),
        (lambda d: d.update(schema_version=True), "schema_version True is not supported"),
        (lambda d: d.update(schema_version=1.0), "schema_version 1.0 is not supported"),
        (lambda d: d.update(name=None), r"name: None is not of type string"),
        (lambda d: d["targets"]["cpu"].pop("files"), "targets.cpu: missing key 'files'"),
        (lambda d: d["targets"].update(tpu=d["targets"]["cpu"]), "targets.tpu: unknown key: 'tpu' is not one of"),
        (lambda d: d["files"][0].update(path="../../etc/passwd"), r"files\[0\].path: '\.\./\.\./etc"),
        (lambda d: d["files"][0].update(path=""), r"files\[0\].path: '' does not match"),
        (lambda d: d["files"][0].update(path="C:/Windows/x"), "must be relative"),
        (lambda d: d["files"][0].update(path="cpu\\..\\..\\x"), "must be relative"),
        (lambda d: d["targets"]["cpu"].update(model="/etc/passwd"), "targets.cpu.model"),
        (lambda d: d["targets"]["cpu"].update(model="cpu/../../x.xml"), "targets.cpu.model"),
        (lambda d: d["targets"]["cpu"].update(model="gpu/model.xml"), "targets.cpu.model"),
        (lambda d: d["targets"]["cpu"].update(model="cpu/other.xml"), "targets.cpu.model"),
    ],
)
def test_malformed_manifest_says_what_is_wrong(bundle, edit, message):
    path = bundle / mf.MANIFEST_NAME
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(mf.BundleError, match=message):
        mf.load_manifest(bundle)


def test_unreadable_manifest(bundle):
    (bundle / mf.MANIFEST_NAME).write_text("{not json")
    with pytest.raises(mf.BundleError, match="unreadable manifest"):
        mf.load_manifest(bundle)
    with pytest.raises(mf.BundleError, match="no manifest"):
        mf.load_manifest(bundle / "cpu")
