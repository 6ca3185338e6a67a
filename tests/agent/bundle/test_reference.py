"""The manifest's quality ``reference`` (schema_version 2): checked like the rest, every bad
or hostile value a one-line BundleError; a bundle without one still loads."""

from __future__ import annotations

import json

import pytest

from edge_agent.bundle import manifest as mf
from edge_agent.quality.drift import Reference


def _data(bundle):
    return json.loads((bundle / mf.MANIFEST_NAME).read_text())


def _write(bundle, data):
    (bundle / mf.MANIFEST_NAME).write_text(json.dumps(data))


def _reference(n=5):
    split = {"uncertain": [0.1 * (i % 5) for i in range(n)],
             "margin": [0.9 - 0.1 * (i % 5) for i in range(n)],
             "coverage": [0.4] * n}
    return {"statistic": "uncertain", "threshold": 0.9, "target": "cpu",
            "splits": {"val": split, "test": dict(split)}}


def test_a_reference_round_trips_and_scores(bundle):
    data = _data(bundle)
    data["reference"] = _reference()
    _write(bundle, data)
    manifest, _, _ = mf.open_target(bundle, "cpu")
    assert manifest.schema_version == 2
    assert manifest.reference == _reference()
    assert mf.verify_bundle(bundle) == []
    mf.write_manifest(bundle, manifest)  # written back as read
    assert _data(bundle)["reference"] == _reference()
    ref = Reference.from_manifest(manifest.reference)
    assert ref.threshold == 0.9 and ref.info["split"] == "val+test" and ref.info["frames"] == 10
    assert ref.score(-1.0) == 0.0 and ref.score(2.0) == 1.0 and 0.4 < ref.score(0.2) < 0.6


def test_without_a_reference_a_bundle_loads_and_has_none(bundle):
    manifest = mf.load_manifest(bundle)
    assert manifest.reference is None and "reference" not in manifest.to_dict()
    assert Reference.from_manifest(manifest.reference) is None
    data = _data(bundle)
    data["schema_version"] = 1  # bundles built before the reference still load
    _write(bundle, data)
    assert mf.load_manifest(bundle).schema_version == 1


def _set(path, value):
    def edit(ref):
        node = ref
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


HOSTILE = [
    (_set(["threshold"], 1.0), "threshold"),
    (_set(["threshold"], 0.2), "threshold"),
    (_set(["threshold"], "0.9"), "threshold"),
    (_set(["statistic"], "psi"), "statistic"),
    (_set(["splits", "val", "uncertain", 0], 1.5), "uncertain"),
    (_set(["splits", "val", "uncertain", 0], -0.1), "uncertain"),
    (_set(["splits", "val", "margin", 1], True), "margin"),
    (_set(["splits", "val", "margin", 1], "0.5"), "margin"),
    (_set(["splits", "val", "margin", 1], None), "margin"),
    (_set(["splits", "val", "coverage"], [0.1]), "lengths"),
    (_set(["splits", "val", "coverage"], []), "coverage"),
    (_set(["splits", "val", "coverage"], {"a": 1}), "coverage"),
    (_set(["splits", "test", "uncertain"], [0.1] * (mf.MAX_REFERENCE_IMAGES + 1)), "uncertain"),
    (_set(["splits", "Val"], {"uncertain": [0.1], "margin": [0.1], "coverage": [0.1]}),
     "splits"),
    (_set(["splits", "../x"], {"uncertain": [0.1], "margin": [0.1], "coverage": [0.1]}),
     "splits"),
    (_set(["splits", "val\n"], {"uncertain": [0.1], "margin": [0.1], "coverage": [0.1]}),
     "splits"),
    (_set(["splits"], {f"s{i}": {"uncertain": [0.1], "margin": [0.1], "coverage": [0.1]}
                       for i in range(mf.MAX_REFERENCE_SPLITS + 1)}), "splits"),
    (_set(["splits"], {}), "splits"),
    (_set(["splits"], [1, 2]), "splits"),
    (lambda ref: ref.pop("threshold"), "threshold"),
    (lambda ref: ref["splits"]["val"].pop("margin"), "margin"),
]


@pytest.mark.parametrize("edit,where", HOSTILE)
def test_a_bad_reference_is_a_one_line_bundle_error(bundle, edit, where):
    data = _data(bundle)
    data["reference"] = _reference()
    edit(data["reference"])
    _write(bundle, data)
    with pytest.raises(mf.BundleError) as err:
        mf.open_target(bundle, "cpu")
    text = str(err.value)
    assert "\n" not in text and "reference" in text and where.split("\n")[0] in text, text
    assert mf.verify_bundle(bundle)  # verify says so too, without raising


@pytest.mark.parametrize("text", ["1e999", "-1e999", "NaN", "Infinity"])
def test_non_finite_figures_are_refused(bundle, text):
    data = _data(bundle)
    data["reference"] = _reference()
    raw = json.dumps(data).replace('"coverage": [0.4', f'"coverage": [{text}', 1)
    (bundle / mf.MANIFEST_NAME).write_text(raw)
    with pytest.raises(mf.BundleError):
        mf.load_manifest(bundle)


def test_a_version_1_manifest_may_not_carry_a_reference(bundle):
    data = _data(bundle)
    data["schema_version"] = 1
    data["reference"] = _reference()
    _write(bundle, data)
    with pytest.raises(mf.BundleError, match="reference"):
        mf.load_manifest(bundle)


def test_the_schema_and_the_parser_agree_on_the_reference(bundle):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((mf.Path(mf.__file__).parents[1] / "protocol" / "schemas" /
                         "manifest.schema.json").read_text())
    good = _data(bundle)
    good["reference"] = _reference()
    jsonschema.validate(good, schema)
    assert mf.schema_errors(good) == []
    for edit, _ in HOSTILE[:12]:
        bad = json.loads(json.dumps(good))
        edit(bad["reference"])
        assert mf.schema_errors(bad) or _parser_refuses(bad)


def _parser_refuses(data) -> bool:
    try:
        mf.parse_manifest(data)
    except mf.BundleError:
        return True
    return False
