"""The shipped JSON Schemas and a small stdlib validator for exactly the keywords they use.

Devices must judge a manifest by the same schema the build and the docs use, without
the ``jsonschema`` package (the agent runtime stays light and runs on Python 3.9), so
this module implements the subset of JSON Schema 2020-12 our schemas use. A schema with
any other keyword is refused when it is loaded (never silently ignored), and the unit
tests compare every verdict with ``jsonschema`` itself.
"""

from __future__ import annotations

import json
import math
import re
from importlib import resources
from typing import Any, Dict, Iterator, List, Tuple

# keywords that only annotate: they never make an instance invalid
ANNOTATIONS = frozenset({"$schema", "$id", "title", "description", "contentEncoding",
                         "contentMediaType", "$comment", "examples", "default"})
KEYWORDS = frozenset({"$defs", "$ref", "type", "const", "enum", "properties", "required",
                      "additionalProperties", "propertyNames", "minProperties", "items",
                      "minItems", "maxItems", "minLength", "maxLength", "pattern", "minimum",
                      "maximum", "exclusiveMinimum", "exclusiveMaximum", "allOf", "oneOf",
                      "anyOf", "if", "then", "else", "not"})
SCHEMA_PACKAGE = "edge_agent.protocol.schemas"


class SchemaError(Exception):
    """A shipped schema is missing, unreadable or uses a keyword this validator lacks."""


def load(name: str) -> Dict[str, Any]:
    """The shipped schema ``<name>.schema.json`` (package data); SchemaError when absent."""
    try:
        text = resources.files(SCHEMA_PACKAGE).joinpath(f"{name}.schema.json").read_text(
            encoding="utf-8")
        schema = json.loads(text)
    except (OSError, ValueError, ModuleNotFoundError) as exc:
        raise SchemaError(f"schema {name!r} is not shipped with this segedge install: "
                          f"{exc}") from None
    _check_keywords(schema, name)
    return schema


def _check_keywords(schema: Any, where: str) -> None:
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise SchemaError(f"{where}: a schema must be an object or a boolean")
    unknown = set(schema) - KEYWORDS - ANNOTATIONS
    if unknown:
        raise SchemaError(f"{where}: keyword(s) {sorted(unknown)} not supported by "
                          f"edge_agent.bundle.schema")
    for key in ("properties", "$defs"):
        for sub_name, sub in schema.get(key, {}).items():
            _check_keywords(sub, f"{where}/{key}/{sub_name}")
    for key in ("additionalProperties", "propertyNames", "items", "if", "then", "else", "not"):
        if key in schema:
            _check_keywords(schema[key], f"{where}/{key}")
    for key in ("allOf", "oneOf", "anyOf"):
        for i, sub in enumerate(schema.get(key, [])):
            _check_keywords(sub, f"{where}/{key}/{i}")


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":  # JSON Schema: 1.0 is an integer, true is not
        if isinstance(value, bool):
            return False
        return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)
                                          and value.is_integer())
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return {"string": str, "object": dict, "array": list, "boolean": bool,
            "null": type(None)}[name] is type(value)


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but true != 1 and key order does not matter."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


Error = Tuple[str, str]  # (where, e.g. "targets.cpu.files[0].size", message)


class Validator:
    """``iter_errors(instance)`` yields (path, message) for every violation found."""

    def __init__(self, schema: Dict[str, Any]) -> None:
        _check_keywords(schema, "schema")
        self.root = schema

    def is_valid(self, instance: Any) -> bool:
        return next(self.iter_errors(instance), None) is None

    def errors(self, instance: Any) -> List[str]:
        return [f"{path or '.'}: {message}" for path, message in self.iter_errors(instance)]

    def iter_errors(self, instance: Any) -> Iterator[Error]:
        yield from self._validate(instance, self.root, "")

    def _resolve(self, ref: str) -> Any:
        if not ref.startswith("#/"):
            raise SchemaError(f"only local $ref is supported, got {ref!r}")
        node: Any = self.root
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def _validate(self, value: Any, schema: Any, path: str) -> Iterator[Error]:
        if schema is True:
            return
        if schema is False:
            yield path, "no value is allowed here"
            return
        if "$ref" in schema:
            yield from self._validate(value, self._resolve(schema["$ref"]), path)
        yield from self._generic(value, schema, path)
        yield from self._combinators(value, schema, path)
        if isinstance(value, dict):
            yield from self._object(value, schema, path)
        elif isinstance(value, list):
            yield from self._array(value, schema, path)
        elif isinstance(value, str):
            yield from self._string(value, schema, path)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield from self._number(value, schema, path)

    def _generic(self, value: Any, schema: Dict[str, Any], path: str) -> Iterator[Error]:
        if "type" in schema:
            names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            if not any(_is_type(value, n) for n in names):
                yield path, f"{_short(value)} is not of type {' or '.join(names)}"
        if "const" in schema and not _equal(value, schema["const"]):
            yield path, f"{_short(schema['const'])} was expected"
        if "enum" in schema and not any(_equal(value, e) for e in schema["enum"]):
            yield path, f"{_short(value)} is not one of {schema['enum']}"

    def _combinators(self, value: Any, schema: Dict[str, Any], path: str) -> Iterator[Error]:
        for sub in schema.get("allOf", []):
            yield from self._validate(value, sub, path)
        if "anyOf" in schema and not any(self._ok(value, s, path) for s in schema["anyOf"]):
            yield path, f"{_short(value)} is not valid under any of the given schemas"
        if "oneOf" in schema:
            matched = sum(1 for s in schema["oneOf"] if self._ok(value, s, path))
            if matched != 1:
                yield path, (f"{_short(value)} is valid under {matched} of the given schemas, "
                             f"exactly one is required")
        if "not" in schema and self._ok(value, schema["not"], path):
            yield path, f"{_short(value)} should not be valid under {schema['not']}"
        if "if" in schema:
            branch = "then" if self._ok(value, schema["if"], path) else "else"
            if branch in schema:
                yield from self._validate(value, schema[branch], path)

    def _ok(self, value: Any, schema: Any, path: str) -> bool:
        return next(self._validate(value, schema, path), None) is None

    def _object(self, value: Dict[str, Any], schema: Dict[str, Any], path: str
                ) -> Iterator[Error]:
        for key in schema.get("required", []):
            if key not in value:
                yield path, f"missing key {key!r}"
        if len(value) < schema.get("minProperties", 0):
            yield path, f"should have at least {schema['minProperties']} properties"
        props = schema.get("properties", {})
        for key, item in value.items():
            name = key if isinstance(key, str) and key.isidentifier() else repr(key)
            where = f"{path}.{name}" if path else name
            if "propertyNames" in schema:
                for _, message in self._validate(key, schema["propertyNames"], where):
                    yield where, f"unknown key: {message}"
            if key in props:
                yield from self._validate(item, props[key], where)
            elif "additionalProperties" in schema:
                yield from self._validate(item, schema["additionalProperties"], where)

    def _array(self, value: List[Any], schema: Dict[str, Any], path: str) -> Iterator[Error]:
        if len(value) < schema.get("minItems", 0):
            yield path, f"{_short(value)} should have at least {schema['minItems']} items"
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            yield path, f"{_short(value)} should have at most {schema['maxItems']} items"
        if "items" in schema:
            for i, item in enumerate(value):
                yield from self._validate(item, schema["items"], f"{path}[{i}]")

    def _string(self, value: str, schema: Dict[str, Any], path: str) -> Iterator[Error]:
        length = len(value)
        if length < schema.get("minLength", 0):
            yield path, f"{_short(value)} should have at least {schema['minLength']} characters"
        if "maxLength" in schema and length > schema["maxLength"]:
            yield path, f"{_short(value)} should have at most {schema['maxLength']} characters"
        if "pattern" in schema and not re.search(schema["pattern"], value):
            yield path, f"{_short(value)} does not match {schema['pattern']!r}"

    def _number(self, value: float, schema: Dict[str, Any], path: str) -> Iterator[Error]:
        checks = (("minimum", lambda v, b: v >= b, "greater than or equal to"),
                  ("maximum", lambda v, b: v <= b, "less than or equal to"),
                  ("exclusiveMinimum", lambda v, b: v > b, "greater than"),
                  ("exclusiveMaximum", lambda v, b: v < b, "less than"))
        for key, ok, words in checks:
            if key in schema and not ok(value, schema[key]):
                yield path, f"{_short(value)} should be {words} {schema[key]}"
