"""edge_agent.bundle.schema: the stdlib validator agrees with jsonschema on every shipped schema."""

from __future__ import annotations

import json
import os
from importlib import resources

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.bundle import schema

jsonschema = pytest.importorskip("jsonschema")
NAMES = sorted(p.name[: -len(".schema.json")]
               for p in resources.files("edge_agent.protocol.schemas").iterdir()
               if p.name.endswith(".schema.json"))


def test_every_schema_ships_and_loads():
    assert "manifest" in NAMES and len(NAMES) >= 4
    for name in NAMES:
        loaded = schema.load(name)
        jsonschema.validators.validator_for(loaded).check_schema(loaded)
        schema.Validator(loaded)


def test_a_missing_schema_is_an_error_not_a_pass():
    with pytest.raises(schema.SchemaError, match="not shipped"):
        schema.load("nonexistent")


def test_an_unsupported_keyword_is_refused_not_ignored():
    with pytest.raises(schema.SchemaError, match="uniqueItems"):
        schema.Validator({"type": "array", "uniqueItems": True})
    with pytest.raises(schema.SchemaError, match="patternProperties"):
        schema.Validator({"properties": {"a": {"patternProperties": {}}}})


@pytest.mark.parametrize("sch, good, bad", [
    ({"type": "integer"}, [1, 1.0, -3], [True, 1.5, "1", None]),
    ({"type": "number", "minimum": 0, "maximum": 1}, [0, 0.5, 1], [-0.1, 2]),
    ({"exclusiveMinimum": 0}, [0.1, "x"], [0, -1]),
    ({"const": 1}, [1, 1.0], [True, "1", 2]),
    ({"enum": ["a", 1]}, ["a", 1], ["b", True]),
    ({"type": ["array", "null"], "minItems": 1, "maxItems": 2, "items": {"type": "string"}},
     [None, ["a"], ["a", "b"]], [[], ["a", "b", "c"], [1], "a"]),
    ({"type": "string", "minLength": 2, "maxLength": 3, "pattern": "^[a-z]+$"},
     ["ab", "abc"], ["a", "abcd", "A1"]),
    ({"type": "object", "required": ["a"], "minProperties": 2,
      "properties": {"a": {"type": "integer"}}, "additionalProperties": {"type": "string"},
      "propertyNames": {"enum": ["a", "b"]}},
     [{"a": 1, "b": "x"}], [{"a": 1}, {"a": "1", "b": "x"}, {"a": 1, "b": 2}, {"a": 1, "c": "x"}]),
    ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, ["x", 1], [1.5, None]),
    ({"anyOf": [{"minimum": 3}, {"maximum": 1}]}, [0, 4], [2]),
    ({"allOf": [{"$ref": "#/$defs/p"}], "$defs": {"p": {"minimum": 0}}}, [0, 5], [-1]),
    ({"if": {"const": 1}, "then": {"type": "integer"}, "else": {"type": "string"}},
     [1, "x"], [2]),
    ({"not": {"type": "string"}}, [1], ["x"]),
])
def test_each_keyword_matches_jsonschema(sch, good, bad):
    ours, theirs = schema.Validator(sch), jsonschema.Draft202012Validator(sch)
    for value in good:
        assert ours.is_valid(value) and theirs.is_valid(value), value
    for value in bad:
        assert not ours.is_valid(value) and not theirs.is_valid(value), value


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(-2, 2),
              st.sampled_from(["", "png", "rle", "online", "degraded", "cam-01", "a" * 70, "x"])),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(
                                ["schema_version", "state", "ts", "reason", "mask", "encoding",
                                 "size", "counts", "values", "width", "height", "frame_id",
                                 "device_id", "model", "name", "x"]), inner, max_size=6)),
    max_leaves=15)


@settings(max_examples=int(os.environ.get("SEGEDGE_FUZZ_EXAMPLES", "1000")), derandomize=True,
          deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(name=st.sampled_from(NAMES), value=json_values)
def test_fuzz_verdicts_equal_jsonschema_on_every_schema(name, value):
    loaded = schema.load(name)
    assert schema.Validator(loaded).is_valid(value) == \
        jsonschema.Draft202012Validator(loaded).is_valid(value), json.dumps(value)[:200]
