"""Property-based fuzzing of every input parser (issue 8): a fixed seed, >= 1,000 cases each.

The property is always the same: whatever the input, the parser either accepts it or
raises its one documented error with a one-line message; nothing else escapes. The
manifest fuzzing also proves that the stdlib parser and the shipped schema agree.
``SEGEDGE_FUZZ_EXAMPLES`` raises the count for long runs (the long-run script).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent import config as cf
from edge_agent.bundle import manifest as mf
from edge_agent.bundle import schema
from edge_agent.protocol import encoding as enc

EXAMPLES = int(os.environ.get("SEGEDGE_FUZZ_EXAMPLES", "1000"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck), print_blob=True)

# ---- values ------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(10 ** 30), max_value=10 ** 30), st.integers(-3, 70000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["", "1", "cpu", "CPU", "../x", "/etc/passwd",
                                           "x" * 300, "http://[::1", "\udcff", "a\nb"]))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12)


# numbers around every range's ends, and the strings valid keys take
near_bounds = st.one_of(
    st.sampled_from(sorted({b + d for _k, _t, _d, _h in cf.describe() for b in (0, 1, 5, 64, 1000,
                                                                           3600, 65535, 86400)
                            for d in (-1, 0, 1)})),
    st.floats(-1, 70000), st.sampled_from(["png", "rle", "model", "frame", "5", "3.1.1", "cpu",
                                           "f32", "INFO", "debug", ["CPU"], ["AUTO"], []]))


def _one_line(message: str) -> None:
    assert message and "\n" not in message


# ---- config ------------------------------------------------------------------------------

KEYS = [key for key, *_ in cf.describe()]


TYPES = {key: tp for key, tp, _d, _h in cf.describe()}


def _typed(key):
    """Values of the key's own type, so the fuzzing reaches the range and value checks."""
    return {"int": st.one_of(near_bounds.filter(lambda v: isinstance(v, int)),
                             st.integers(-(10 ** 20), 10 ** 20)),
            "float": st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                               near_bounds.filter(lambda v: isinstance(v, int))),
            "bool": st.booleans(),
            "str": st.one_of(st.text(max_size=20), near_bounds.filter(
                lambda v: isinstance(v, str)), st.sampled_from(["", "http://[::1", "x" * 300])),
            }.get(TYPES[key], st.lists(st.text(max_size=8), max_size=3))


typed_assignment = st.sampled_from(KEYS).flatmap(lambda k: st.tuples(st.just(k), _typed(k)))


def _toml_value(value):
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if value != value else "inf" if value == float("inf") else \
            "-inf" if value == float("-inf") else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):  # TOML has no lone surrogates (the env fuzzing sends them)
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{_toml_string(k)} = {_toml_value(v)}" for k, v in value.items()) \
        + "}"


def _toml_string(text):
    """A TOML basic string: JSON's escapes minus its surrogate pairs (TOML wants \\U...)."""
    clean = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return json.dumps(clean, ensure_ascii=False)


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzzcfg")
    (root / "bundle").mkdir()
    (root / "clip.mp4").write_bytes(b"x")
    return root


def _config_text(place, assignments, nesting):
    lines = [f'[source]\nuri = "{place / "clip.mp4"}"', f'[model]\nbundle = "{place / "bundle"}"']
    sections = {"": [], "source": [], "model": [], "output": [], "mqtt": []}
    for key, value in dict(assignments).items():  # TOML refuses a key set twice
        section, _, name = key.rpartition(".")
        sections.setdefault(section, []).append(f"{_toml_string(name)} = {_toml_value(value)}")
    text = "\n".join(sections.pop("")) + "\n"
    for section, body in sections.items():
        head = f'[{_toml_string(section)}]' if section not in ("source", "model") else ""
        own = [line for line in lines if line.startswith(f"[{section}]")]
        text += "\n".join(own or [head]) + "\n" + "\n".join(body) + "\n"
    if nesting:
        text += "deep = " + "[" * nesting + "]" * nesting + "\n"
    return text


@FUZZ
@given(assignments=st.lists(st.one_of(
           typed_assignment, typed_assignment,
           st.tuples(st.one_of(st.sampled_from(KEYS), st.text(max_size=10)),
                     st.one_of(near_bounds, scalars, json_values))), max_size=4),
       nesting=st.sampled_from([0, 0, 0, 3, 1000]))
def test_fuzz_config_file(place, assignments, nesting):
    path = place / "agent.toml"
    path.write_text(_config_text(place, assignments, nesting), encoding="utf-8",
                    errors="surrogatepass")
    try:
        cf.load(str(path), {})
    except cf.ConfigError as exc:
        _one_line(str(exc))


ENVS = [f"SEGEDGE_{k.replace('.', '_').upper()}" for k in KEYS]


@FUZZ
@given(env=st.dictionaries(st.one_of(st.sampled_from(ENVS), st.just("SEGEDGE_MQTT_X"),
                                     st.text(max_size=8).map(lambda t: "SEGEDGE_" + t)),
                           st.one_of(st.text(max_size=40), st.sampled_from(
                               ["[" * 100_000, "9" * 5000, "1e400", "nan", "-1", "70000",
                                "/" + "p" * 300, "http://[::1", '["CPU"]', "[1]", "0x10"])),
                           max_size=4))
def test_fuzz_config_environment(place, env):
    try:
        cf.load(None,
                {"SEGEDGE_SOURCE_URI": str(place / "clip.mp4"),
                 "SEGEDGE_MODEL_BUNDLE": str(place / "bundle"), **env})
    except cf.ConfigError as exc:
        _one_line(str(exc))


# ---- manifest ----------------------------------------------------------------------------

def _file(path):
    return {"path": path, "sha256": "a" * 64, "size": 10}


GOOD = {
    "schema_version": 1, "name": "tiny", "version": "0.0.1", "created": "2026-01-01T00:00:00Z",
    "tools": {"openvino": "2026.0", "torch": "none", "nncf": "none"},
    "source_checkpoint": {"file": "none", "sha256": "0" * 64},
    "model": {"architecture": "tiny", "encoder": "none", "label_mode": "binary"},
    "input": {"name": "image", "shape": [1, 3, 64, 64], "element_type": "f32", "layout": "NCHW",
              "color_order": "RGB", "value_range": [0.0, 255.0],
              "normalization": "inside_model", "mean": None, "std": None, "kind": ""},
    "output": {"name": "logits", "shape": [1, 2, 64, 64], "element_type": "f32",
               "layout": "NCHW", "kind": "logits"},
    "classes": ["background", "pet"],
    "targets": {"cpu": {"device": "CPU", "precision": "INT8", "format": "openvino_ir",
                        "model": "cpu/model.xml",
                        "files": [_file("cpu/model.xml"), _file("cpu/model.bin")],
                        "min_runtime": "2023.0", "static_shape": True,
                        "accuracy": {"dice": 1.0, "fg_iou": 1.0, "inference_precision": "f32"}}},
    "evaluation": {"split": "test", "images": 0, "metrics": {}},
    "files": [_file("cpu/model.bin"), _file("cpu/model.xml")],
}


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


ALL_PATHS = list(_paths(GOOD))[1:]


def _mutate(data, path, action, value):
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if action == "delete":
        del parent[last]
    elif action == "add" and isinstance(parent, dict):
        parent[f"{last}_extra"] = value
    else:
        parent[last] = value


mutations = st.lists(st.tuples(st.sampled_from(ALL_PATHS),
                               st.sampled_from(["set", "set", "delete", "add"]), json_values),
                     min_size=1, max_size=3)


@pytest.fixture(scope="module")
def jsonschema_validator():
    jsonschema = pytest.importorskip("jsonschema")
    return jsonschema.Draft202012Validator(schema.load("manifest"))


@FUZZ
@given(changes=mutations)
def test_fuzz_manifest_parser_agrees_with_the_schema(changes, jsonschema_validator):
    data = _apply_all(changes)
    try:
        mf.parse_manifest(data)
        accepted = True
    except mf.BundleError as exc:
        _one_line(str(exc))
        accepted = False
    ours = schema.Validator(schema.load("manifest")).is_valid(data)
    theirs = jsonschema_validator.is_valid(data)
    assert ours == theirs, (data, schema.Validator(schema.load("manifest")).errors(data))
    if accepted:
        assert theirs, list(jsonschema_validator.iter_errors(data))


@FUZZ
@given(raw=st.one_of(
    st.binary(max_size=200),
    st.builds(lambda d, cut: json.dumps(d).encode()[:cut], json_values, st.integers(0, 300)),
    st.builds(lambda n: ("[" * n).encode(), st.integers(0, 200_000)),
    st.builds(lambda changes: json.dumps(_apply_all(changes)).encode(), mutations)))
def test_fuzz_manifest_bytes(raw):
    try:
        mf.parse_manifest_bytes(raw)
    except mf.BundleError as exc:
        _one_line(str(exc))


def _apply_all(changes):
    data = copy.deepcopy(GOOD)
    for path, action, value in changes:
        with contextlib.suppress(KeyError, IndexError, TypeError):
            _mutate(data, path, action, value)
    return data


def test_the_good_manifest_is_good():
    mf.parse_manifest(copy.deepcopy(GOOD))


# ---- decoders ----------------------------------------------------------------------------

ints = st.one_of(st.integers(-5, 40), st.integers(-(2 ** 70), 2 ** 70), st.booleans())
rle_counts = st.one_of(st.text(alphabet=[chr(c) for c in range(40, 115)], max_size=60),
                       st.lists(ints, max_size=20), json_values)
rle = st.fixed_dictionaries({"size": st.one_of(st.lists(ints, max_size=3), json_values),
                             "counts": rle_counts},
                            optional={"values": st.one_of(st.lists(ints, max_size=20),
                                                          json_values)})


@FUZZ
@given(data=st.one_of(rle, json_values), encoding=st.sampled_from(["rle", "png", "x", None]))
def test_fuzz_decode_structures(data, encoding):
    try:
        mask = enc.decode(data, encoding, max_pixels=4096)
    except enc.MaskError as exc:
        _one_line(str(exc))
        return
    assert mask.dtype == np.uint8 and mask.ndim == 2 and mask.size <= 4096
    if encoding == "rle":
        assert list(mask.shape) == list(data["size"])


def _png_bytes(mask):
    import base64

    return base64.b64decode(enc.encode_png(mask))


@FUZZ
@given(mask=st.integers(1, 12).flatmap(lambda h: st.integers(1, 12).flatmap(
           lambda w: st.lists(st.integers(0, 4), min_size=h * w, max_size=h * w).map(
               lambda v: np.array(v, np.uint8).reshape(h, w)))),
       cut=st.integers(0, 400), flips=st.lists(st.tuples(st.integers(0, 400),
                                                          st.integers(1, 255)), max_size=3))
def test_fuzz_png_and_rle_bytes(mask, cut, flips):
    import base64

    assert (enc.decode(enc.encode(mask, "rle"), "rle") == mask).all()
    raw = bytearray(_png_bytes(mask))
    for pos, xor in flips:
        if pos < len(raw):
            raw[pos] ^= xor
    raw = bytes(raw[:cut]) if cut < len(raw) else bytes(raw)
    try:
        out = enc.decode(base64.b64encode(raw).decode(), "png", max_pixels=4096)
    except enc.MaskError as exc:
        _one_line(str(exc))
        return
    assert out.dtype == np.uint8 and out.ndim == 2
