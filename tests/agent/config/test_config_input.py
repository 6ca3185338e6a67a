"""Config loader on hostile input: only ConfigError, one line naming the key (issue 8)."""

from __future__ import annotations

import logging
import re
from dataclasses import fields
from pathlib import Path

import pytest

from edge_agent import config as cf
from tests.agent.helpers import to_toml

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def base(tmp_path, config_data):
    """(folder, TOML text) of the minimal config: these tests edit the text itself."""
    return tmp_path, to_toml(config_data)


def _load(tmp_path, text, env=None):
    path = tmp_path / "agent.toml"
    path.write_text(text) if isinstance(text, str) else path.write_bytes(text)
    return cf.load(str(path), env or {})


def _refused(tmp_path, text, env=None) -> str:
    with pytest.raises(cf.ConfigError) as err:
        _load(tmp_path, text, env)
    message = str(err.value)
    assert "\n" not in message and len(message) <= 500
    return message


def test_the_base_config_loads(base):
    tmp, text = base
    cfg, _ = _load(tmp, text)
    assert cfg.device_id == "cam-01"


@pytest.mark.parametrize("extra, env, needle", [
    ('[mqtt]\nkeepalive_s = 70000\n', {}, "mqtt.keepalive_s: must be 5..65535"),
    ('[mqtt]\nkeepalive_s = 4\n', {}, "mqtt.keepalive_s: must be 5..65535"),
    ('[mqtt]\nport = 0\n', {}, "mqtt.port: must be 1..65535"),
    ('[mqtt]\nqos_mask = 3\n', {}, "mqtt.qos_mask: must be 0..2"),
    ("", {"SEGEDGE_MODEL_NUM_REQUESTS": "1000"}, "model.num_requests: must be 0..64"),
    ("", {"SEGEDGE_MODEL_PERFORMANCE_HINT": "CUMULATIVE_THROUGHPUT"},
     "model.performance_hint: must be auto or throughput or latency"),
    ("", {"SEGEDGE_MODEL_PERFORMANCE_HINT": "x" * 100_000}, "model.performance_hint"),
    ("", {"SEGEDGE_MODEL_PERFORMANCE_HINT": '["latency"]'}, "model.performance_hint"),
    ('[output]\nframe_every = -1\n', {}, "output.frame_every: must be 0..100000"),
    ('[output]\nstats_interval_s = 0\n', {}, "output.stats_interval_s: must be > 0"),
    ('[output]\nmax_publish_fps = inf\n', {}, "output.max_publish_fps: must be >= 0"),
    ("", {"SEGEDGE_SOURCE_FPS": "nan"}, "source.fps: must be >= 0"),
    ("", {"SEGEDGE_SOURCE_STALL_TIMEOUT_S": "1e9"}, "source.stall_timeout_s: must be >= 0"),
    ("", {"SEGEDGE_SOURCE_RECONNECT_MAX_S": "0"}, "source.reconnect_max_s: must be > 0"),
    ("", {"SEGEDGE_SOURCE_URI": "http://[::1"}, "source.uri: bad URL"),
    ("", {"SEGEDGE_SOURCE_URI": "rtsp://cam:99999/x"}, "source.uri: bad URL"),
    ("", {"SEGEDGE_MODEL_BUNDLE": "/" + "b" * 300}, "model.bundle: no such directory"),
    ("", {"SEGEDGE_MQTT_TLS_CA": "/" + "c" * 300}, "mqtt.tls_ca: no such file"),
    ("", {"SEGEDGE_SOURCE_URI": "/" + "v" * 300}, "source.uri: no such file"),
    ("", {"SEGEDGE_MODEL_DEVICES": "[" * 100_000}, "model.devices (from SEGEDGE_MODEL_DEVICES)"),
    ("", {"SEGEDGE_MODEL_DEVICES": '["a", 1]'}, "model.devices"),
    ("", {"SEGEDGE_MODEL_NUM_REQUESTS": "9" * 5000}, "model.num_requests"),
    ("", {"SEGEDGE_MQTT_PORT": "1e400"}, "mqtt.port"),
    ("", {"SEGEDGE_SOURCE_FPS": "1e400"}, "source.fps: must be >= 0"),
    ("", {"SEGEDGE_DEVICE_ID": "x" * 200}, "device_id: must be 1..128"),
    ("", {"SEGEDGE_MQTT_HOST": "\udcff"}, "mqtt.host: not valid UTF-8"),
])
def test_observed_and_range_cases_are_refused(base, extra, env, needle):
    tmp, text = base
    assert needle in _refused(tmp, text + extra, env)


def test_toml_nested_1000_deep_is_refused(base):
    tmp, text = base
    message = _refused(tmp, text.replace('device_id = "cam-01"',
                                         "device_id = " + "[" * 1000 + "]" * 1000))
    assert "line 1: device_id: invalid TOML: nested too deep" in message


def test_5000_digit_integer_in_toml(base):
    tmp, text = base
    message = _refused(tmp, text.replace("[model]", "[model]\nnum_requests = " + "9" * 5000))
    assert "line 5: num_requests: number too long" in message


def test_bad_bytes_and_huge_files(base):
    tmp, text = base
    assert "not UTF-8" in _refused(tmp, b"\xff\xfe" + text.encode())
    assert "larger than" in _refused(tmp, "# " + "x" * (cf.MAX_CONFIG_BYTES + 10))
    with pytest.raises(cf.ConfigError, match="config file .*: not found"):
        cf.load(str(tmp / "missing.toml"), {})
    with pytest.raises(cf.ConfigError, match="config file"):
        cf.load(str(tmp), {})  # a directory


def test_newlines_in_keys_stay_on_one_line(base):
    tmp, text = base
    message = _refused(tmp, text + '[mqtt]\n"a\\nb\\u0000" = 1\n')
    assert "unknown key" in message


def test_a_non_string_password_is_never_echoed(base):
    tmp, text = base
    for value in ("12345678901", '["hunter2-secret"]', "{ x = \"hunter2-secret\" }"):
        message = _refused(tmp, text + f'[mqtt]\nusername = "u"\npassword = {value}\n')
        assert "mqtt.password" in message and "value not shown" in message
        assert "hunter2" not in message and "12345678901" not in message


def test_password_file_readable_by_others_is_warned_about(base, caplog):
    tmp, text = base
    pw = tmp / "pw"
    pw.write_text("s3cret\n")
    pw.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="segedge.config"):
        cfg, _ = _load(tmp, text + f'[mqtt]\nusername = "u"\npassword_file = "{pw}"\n')
    assert cfg.mqtt.password == "s3cret"
    warned = [r.getMessage() for r in caplog.records]
    assert any("readable by group or others" in m and "0644" in m for m in warned)
    assert not any("s3cret" in m for m in warned)
    caplog.clear()
    pw.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="segedge.config"):
        _load(tmp, text + f'[mqtt]\nusername = "u"\npassword_file = "{pw}"\n')
    assert not caplog.records


def test_password_file_not_utf8_or_huge(base):
    tmp, text = base
    pw = tmp / "pw"
    pw.write_bytes(b"\xff\xfe")
    pw.chmod(0o600)
    cfgtext = text + f'[mqtt]\nusername = "u"\npassword_file = "{pw}"\n'
    assert "not UTF-8" in _refused(tmp, cfgtext)
    pw.write_bytes(b"x" * 10_000)
    assert "longer than" in _refused(tmp, cfgtext)


def test_every_number_has_a_range():
    """A new numeric key without a range fails here: every number is checked at start."""
    for cls in (cf.Config, *cf.SECTIONS.values()):
        for f in fields(cls):
            if f.type in ("int", "float"):
                assert f.metadata.get("range"), f"{cls.__name__}.{f.name} has no range"


def test_every_default_is_in_range(tmp_path):
    bundle = tmp_path / "b"
    bundle.mkdir()
    cfg = cf.Config()
    cfg.model.bundle, cfg.source.uri = str(bundle), "0"
    cf.validate(cfg)


def test_docs_key_table_is_the_generated_one():
    docs = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    table = cf.key_table()
    assert table in docs, ("docs/config.md's key table differs from edge_agent.config.key_table()"
                           "; regenerate it:\n" + table)
    rows = [line for line in docs.splitlines() if re.match(r"^\| `[a-z_.]+` \|", line)]
    assert len(rows) == len(cf.describe())


@pytest.mark.e2e
def test_observed_cases_exit_78_with_one_line(tmp_path, tiny_bundle):
    """The CLI path systemd and the role's validate: rely on (exit 78, one line, no traceback)."""
    import hashlib
    import json
    import shutil
    import subprocess
    import sys

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"x")
    bad = tmp_path / "truncated"
    shutil.copytree(tiny_bundle, bad)
    xml = (bad / "cpu" / "model.xml").read_bytes()[:300]
    (bad / "cpu" / "model.xml").write_bytes(xml)
    data = json.loads((bad / "manifest.json").read_text())
    for entries in [data["files"]] + [t["files"] for t in data["targets"].values()]:
        for entry in entries:
            if entry["path"] == "cpu/model.xml":
                entry.update(sha256=hashlib.sha256(xml).hexdigest(), size=len(xml))
    (bad / "manifest.json").write_text(json.dumps(data))
    good = f'[source]\nuri = "{clip}"\n[model]\nbundle = "{tiny_bundle}"\n'
    cases = [
        (good.replace(str(clip), "http://[::1"), {}, "source.uri: bad URL"),
        (good, {"SEGEDGE_MODEL_BUNDLE": "/" + "b" * 300}, "model.bundle"),
        (good, {"SEGEDGE_MQTT_TLS_CA": "/" + "c" * 300}, "mqtt.tls_ca"),
        (good, {"SEGEDGE_MODEL_DEVICES": "[" * 100_000}, "model.devices"),
        ("deep = " + "[" * 1000 + "]" * 1000 + "\n" + good, {}, "config"),
        (good + "num_requests = " + "9" * 5000 + "\n", {}, "num_requests"),
        (good + "[mqtt]\nkeepalive_s = 70000\n", {}, "mqtt.keepalive_s: must be 5..65535"),
        (good.replace(str(tiny_bundle), str(bad)), {}, "not a readable OpenVINO IR"),
    ]
    for text, env, needle in cases:
        path = tmp_path / "agent.toml"
        path.write_text(text)
        res = subprocess.run([sys.executable, "-m", "edge_agent", "--config", str(path),
                              "--check-config"], capture_output=True, text=True, timeout=60,
                             env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env})
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 78 and len(lines) == 1 and needle in lines[0], (needle, lines)
        assert "Traceback" not in res.stderr


@pytest.mark.parametrize("depth", [300, 1000])
def test_a_deeply_nested_value_still_names_its_key(base, depth):
    tmp, text = base
    message = _refused(tmp, text.replace('device_id = "cam-01"',
                                         "device_id = " + "[" * depth + "]" * depth))
    assert "device_id" in message
