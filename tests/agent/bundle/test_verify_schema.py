"""segedge-build verify judges the manifest by the shipped schema; no schema is a failure."""

from __future__ import annotations

import json

from build_models import verify as vf
from edge_agent.bundle import manifest as mf
from edge_agent.bundle import schema


def test_good_bundle_passes(bundle):
    assert vf.verify(bundle, run=False)["problems"] == []


def test_every_schema_violation_is_listed(bundle):
    data = json.loads((bundle / mf.MANIFEST_NAME).read_text())
    data.update(name=None, created="yesterday")
    (bundle / mf.MANIFEST_NAME).write_text(json.dumps(data))
    problems = vf.verify(bundle, run=False)["problems"]
    assert any("schema: name: None is not of type string" in p for p in problems)
    assert any("schema: created: 'yesterday' does not match" in p for p in problems)


def test_a_missing_schema_fails_instead_of_passing(bundle, monkeypatch):
    monkeypatch.setattr(schema, "SCHEMA_PACKAGE", "edge_agent.no_such_package")
    mf._validator.cache_clear()
    try:
        result = vf.verify(bundle, run=False)
    finally:
        mf._validator.cache_clear()
    assert not result["ok"]
    assert any("not shipped" in p for p in result["problems"])
