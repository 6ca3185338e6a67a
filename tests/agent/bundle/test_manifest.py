"""The shared bundle module: what a consumer accepts and what it refuses, and why."""

from __future__ import annotations

import json
import shutil

import pytest

from edge_agent.bundle import manifest as mf


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
        (lambda d: d.update(schema_version=3), "schema_version 3 is not supported"),
        (lambda d: d.pop("classes"), "missing key 'classes'"),
        (lambda d: d.update(schema_version=True), "schema_version True is not supported"),
        (lambda d: d.update(schema_version=1.0), "schema_version 1.0 is not supported"),
        (lambda d: d.update(name=None), r"name: None is not of type string"),
        (lambda d: d["targets"]["cpu"].pop("files"), "targets.cpu: missing key 'files'"),
        (lambda d: d["targets"].update(tpu=d["targets"]["cpu"]),
         "targets.tpu: unknown key: 'tpu' is not one of"),
        (lambda d: d["files"][0].update(path="../../etc/passwd"),
         r"files\[0\].path: '\.\./\.\./etc"),
        (lambda d: d["files"][0].update(path=""), r"files\[0\].path: '' does not match"),
        (lambda d: d["files"][0].update(path="C:/Windows/x"), "must be relative"),
        (lambda d: d["files"][0].update(path="cpu/model.bin\n"), "must be relative"),
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


# ---- hostile manifests and bundles (issue 8): only BundleError, one line -------------------

def _write(bundle, data):
    (bundle / mf.MANIFEST_NAME).write_text(json.dumps(data))


def _data(bundle):
    return json.loads((bundle / mf.MANIFEST_NAME).read_text())


def _nest(depth):
    value = {}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize("edit", [
    lambda d: d["targets"].update(gpu=None),
    lambda d: d.update(targets=[d["targets"]["cpu"]]),
    lambda d: d.update(classes=5),
    lambda d: d.update(input="image"),
    lambda d: d["files"][0].update(size="abc"),
    lambda d: d["files"][0].update(size=1.5),
    lambda d: d["targets"]["cpu"]["files"][0].update(size=None),
    lambda d: d["input"].update(shape=[1, 3, "a", "b"]),
    lambda d: d["input"].update(shape=[1, 3, 64]),
    lambda d: d["input"].update(normalization="caller"),
    lambda d: d["input"].update(normalization="caller", mean=["a", 1, 2], std=[1, 1, 1]),
    lambda d: d.update(name=None),
    lambda d: d.update(name=["x"]),
    lambda d: d.update(schema_version=True),
    lambda d: d.update(schema_version=1.0),
    lambda d: d.update(schema_version="1"),
    lambda d: d["model"].update(deep=_nest(200)),
    lambda d: d["targets"]["cpu"].update(model=None),
    lambda d: d["targets"]["cpu"].update(static_shape="no"),
    lambda d: d["targets"]["cpu"].update(accuracy=[1]),
    lambda d: d["tools"].update(torch=None),
])
def test_observed_manifest_crashes_are_bundle_errors(bundle, edit):
    data = _data(bundle)
    edit(data)
    _write(bundle, data)
    with pytest.raises(mf.BundleError) as err:
        mf.open_target(bundle, "cpu")
    assert "\n" not in str(err.value)
    assert mf.verify_bundle(bundle)  # and verify says so too, without raising


def test_json_nested_deeper_than_the_parser_recurses(bundle):
    (bundle / mf.MANIFEST_NAME).write_text('{"schema_version": 1, "x": ' + "[" * 100_000
                                           + "]" * 100_000 + "}")
    with pytest.raises(mf.BundleError, match="unreadable manifest|nested"):
        mf.load_manifest(bundle)


def test_manifest_size_is_limited_before_parsing(bundle):
    data = _data(bundle)
    data["padding"] = "x" * (mf.MAX_MANIFEST_BYTES + 1)
    _write(bundle, data)
    with pytest.raises(mf.BundleError, match="more than the 1048576 allowed"):
        mf.load_manifest(bundle)


def test_nan_and_huge_numbers_are_refused(bundle):
    text = (bundle / mf.MANIFEST_NAME).read_text()
    (bundle / mf.MANIFEST_NAME).write_text(text.replace('"images": 0', '"images": NaN'))
    with pytest.raises(mf.BundleError, match="unreadable manifest"):
        mf.load_manifest(bundle)
    (bundle / mf.MANIFEST_NAME).write_text(text.replace('"images": 0', '"images": ' + "9" * 5000))
    with pytest.raises(mf.BundleError):
        mf.load_manifest(bundle)


def _rewrite_hash(bundle, rel, content):
    import hashlib

    (bundle / rel).write_bytes(content)
    data = _data(bundle)
    for entries in [data["files"]] + [t["files"] for t in data["targets"].values()]:
        for entry in entries:
            if entry["path"] == rel:
                entry.update(sha256=hashlib.sha256(content).hexdigest(), size=len(content))
    _write(bundle, data)


def test_truncated_model_xml_with_rewritten_sha256_fails_the_config_check(bundle):
    xml = (bundle / "cpu" / "model.xml").read_bytes()
    _rewrite_hash(bundle, "cpu/model.xml", xml[: len(xml) // 2])
    assert mf.verify_bundle(bundle) == []  # the checksums agree with the manifest
    with pytest.raises(mf.BundleError, match="cpu/model.xml: not a readable OpenVINO IR"):
        mf.open_target(bundle, "cpu")


def test_xml_that_is_not_an_ir_fails_the_config_check(bundle):
    _rewrite_hash(bundle, "cpu/model.xml", b"<html><body/></html>")
    with pytest.raises(mf.BundleError, match="not an OpenVINO IR"):
        mf.open_target(bundle, "cpu")


@pytest.mark.parametrize("what", ["cpu/model.bin", "cpu", "manifest.json"])
def test_symlinks_leading_outside_the_bundle_are_refused(bundle, tmp_path, what):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = bundle / what
    moved = outside / target.name
    shutil.move(str(target), str(moved))
    target.symlink_to(moved, target_is_directory=moved.is_dir())
    with pytest.raises(mf.BundleError, match="outside the bundle"):
        mf.open_target(bundle, "cpu")
    assert any("outside the bundle" in p for p in mf.verify_bundle(bundle))


def test_symlinks_inside_the_bundle_and_a_symlinked_bundle_are_fine(bundle, tmp_path):
    (bundle / "cpu" / "model.bin").rename(bundle / "weights.bin")
    (bundle / "cpu" / "model.bin").symlink_to("../weights.bin")
    current = tmp_path / "current"
    current.symlink_to(bundle, target_is_directory=True)
    manifest, entry, path = mf.open_target(current, "cpu")
    assert path == (bundle / "cpu" / "model.xml").resolve()
    blob = mf.read_model(current, entry)
    assert blob.weights == (bundle / "weights.bin").read_bytes()


def test_read_model_returns_the_hashed_bytes_and_refuses_changed_ones(bundle):
    manifest, entry, _ = mf.open_target(bundle, "cpu")
    blob = mf.read_model(bundle, entry)
    assert blob.model == (bundle / "cpu" / "model.xml").read_bytes()
    assert blob.weights == (bundle / "cpu" / "model.bin").read_bytes()
    weights = bytearray(blob.weights)
    weights[-1] ^= 0xFF
    (bundle / "cpu" / "model.bin").write_bytes(bytes(weights))  # changed after the check
    with pytest.raises(mf.BundleError, match="cpu/model.bin: sha256 mismatch"):
        mf.read_model(bundle, entry)


def test_the_model_compiles_from_the_verified_bytes(bundle):
    """What is hashed is what runs: the engine reads the model from read_model's bytes."""
    import gc

    import numpy as np

    from edge_agent.inference import ovcompat

    _, entry, _ = mf.open_target(bundle, "cpu")
    blob = mf.read_model(bundle, entry)
    core = ovcompat.new_core()
    model = ovcompat.read_model_bytes(core, blob.model, blob.weights, ".xml", "image",
                                      [1, 3, 64, 64])
    del blob
    gc.collect()
    (bundle / "cpu" / "model.bin").write_bytes(b"\0" * 16)  # too late to matter
    compiled = core.compile_model(model, "CPU")
    frame = np.zeros((1, 3, 64, 64), np.float32)
    frame[:, 0] = 200.0  # red: "pet" (channel 1) wins everywhere
    out = compiled.create_infer_request().infer({"image": frame})[compiled.output(0)]
    assert out.shape == (1, 2, 64, 64) and (out[0, 1] > out[0, 0]).all()


def test_manifest_the_parser_accepts_validates_against_the_schema(bundle):
    jsonschema = pytest.importorskip("jsonschema")
    from edge_agent.bundle import schema

    data = _data(bundle)
    mf.parse_manifest(data)
    jsonschema.Draft202012Validator(schema.load("manifest")).validate(data)


def test_a_model_openvino_cannot_read_is_a_bundle_error_at_start(bundle):
    """XML that parses but is no model: --check-config passes, start exits 78 (one line)."""
    from edge_agent.bundle.manifest import OpenedBundle
    from edge_agent.config import ModelConfig
    from edge_agent.inference.engine import Engine

    _rewrite_hash(bundle, "cpu/model.xml", b'<?xml version="1.0"?><net name="x" version="11">'
                                           b'<layers><layer id="0" type="Nope"/></layers></net>')
    mf.open_target(bundle, "cpu")  # cheap check passes: well-formed IR XML
    engine = Engine(ModelConfig(bundle=str(bundle)), OpenedBundle.open(str(bundle), "cpu"))
    with pytest.raises(mf.BundleError, match="cpu/model.xml: OpenVINO cannot read the model") \
            as err:
        engine.load()
    assert "\n" not in str(err.value)


def test_found_by_fuzzing_a_newline_in_a_key_stays_on_one_line(bundle):
    data = _data(bundle)
    data["targets"] = {"\n": None}
    with pytest.raises(mf.BundleError) as err:
        mf.parse_manifest_bytes(json.dumps(data).encode())
    assert "\n" not in str(err.value) and r"targets.'\n'" in str(err.value)


# --- issue 17 (6): file sizes are capped before any read, hashes are streamed ---------

def _declare(bundle, rel, size, sha256="0" * 64):
    data = _data(bundle)
    for entries in [data["files"]] + [t["files"] for t in data["targets"].values()]:
        for entry in entries:
            if entry["path"] == rel:
                entry.update(sha256=sha256, size=size)
    _write(bundle, data)


def test_a_declared_size_over_the_cap_is_refused_from_the_manifest(bundle):
    """Refused from the manifest alone (one line, exit 78 at --check-config): no file of
    that size is ever opened."""
    _declare(bundle, "cpu/model.bin", mf.MAX_FILE_BYTES + 1)
    with pytest.raises(mf.BundleError) as err:
        mf.open_target(bundle, "cpu")
    assert f"over the {mf.MAX_FILE_BYTES} bytes a bundle file may have" in str(err.value)
    assert "cpu/model.bin" in str(err.value) and "\n" not in str(err.value)
    assert mf.MAX_FILE_BYTES == 1 << 30  # the documented cap (docs/bundle.md)


def test_a_huge_sparse_file_is_refused_by_its_stat_without_reading_it(tmp_path):
    big = tmp_path / "model.bin"
    with open(big, "wb") as handle:
        handle.truncate(8 << 30)  # 8 GiB, sparse: costs nothing, reading it would
    import time

    t0 = time.monotonic()
    with pytest.raises(mf.BundleError, match="over the 1073741824 bytes"):
        mf._hash_checked(big, 8 << 30)
    assert time.monotonic() - t0 < 1.0  # refused from fstat, not after hashing 8 GiB


def test_hashing_streams_through_a_bounded_buffer(bundle, tmp_path):
    """--check-config of a bundle whose weights are 384 MiB (sparse, declared with their
    real sha256): passes with the process' peak RSS far below the file's size."""
    import hashlib
    import subprocess
    import sys

    size = 384 << 20
    weights = bundle / "cpu" / "model.bin"
    with open(weights, "wb") as handle:
        handle.truncate(size)
    digest = hashlib.sha256()
    zeros = bytes(1 << 20)
    for _ in range(size >> 20):
        digest.update(zeros)
    _declare(bundle, "cpu/model.bin", size, digest.hexdigest())
    # VmHWM: this process' own peak (ru_maxrss would carry the forking parent's over exec)
    probe = ("import sys\n"
             "from pathlib import Path\n"
             "from edge_agent.bundle import manifest\n"
             "manifest.open_target(Path(sys.argv[1]), 'cpu')\n"
             "print(manifest.verify_bundle(Path(sys.argv[1]), ['cpu']))\n"
             "print([line.split()[1] for line in open('/proc/self/status')\n"
             "       if line.startswith('VmHWM:')][0])\n")
    from tests.agent.helpers import ROOT

    res = subprocess.run([sys.executable, "-c", probe, str(bundle)], capture_output=True,
                         text=True, timeout=120, cwd=str(ROOT))
    assert res.returncode == 0, res.stderr
    problems, peak_kib = res.stdout.split("\n")[:2]
    assert problems == "[]"
    assert int(peak_kib) < 128 * 1024, f"peak RSS {int(peak_kib) // 1024} MiB"
