from __future__ import annotations

import pytest

from edge_agent.config import ConfigError, describe, load, source_kind
from tests.agent.helpers import to_toml


def _load(tmp_path, data, env=None):
    path = tmp_path / "a.toml"
    path.write_text(to_toml(data))
    return load(str(path), env or {})


def test_defaults_and_types(tmp_path, config_data):
    cfg, ignored = _load(tmp_path, config_data)
    assert cfg.mqtt.port == 1883 and cfg.model.devices == ["CPU"] and ignored == []
    assert isinstance(cfg.source.fps, float)


def test_env_overrides(tmp_path, config_data):
    cfg, ignored = _load(tmp_path, config_data, {
        "SEGEDGE_MQTT_PORT": "2000", "SEGEDGE_SOURCE_LOOP": "false",
        "SEGEDGE_MODEL_DEVICES": '["npu", "CPU"]', "SEGEDGE_OUTPUT_MAX_PUBLISH_FPS": "2.5",
        "SEGEDGE_DEVICE_ID": "env-cam", "SEGEDGE_SOMETHING": "x", "SEGEDGE_CONFIG": "y"})
    assert (cfg.mqtt.port, cfg.source.loop, cfg.model.devices, cfg.output.max_publish_fps,
            cfg.device_id) == (2000, False, ["NPU", "CPU"], 2.5, "env-cam")
    assert ignored == ["SEGEDGE_SOMETHING"]


def test_password_sources(tmp_path, config_data):
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    config_data["mqtt"] = {"username": "u", "password_file": str(pw)}
    cfg, _ = _load(tmp_path, config_data)
    assert cfg.mqtt.password == "s3cret"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_password").write_text("fromcreds")
    config_data["mqtt"] = {"username": "u"}
    cfg, _ = _load(tmp_path, config_data, {"CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.mqtt.password == "fromcreds"


@pytest.mark.parametrize("patch, needle", [
    ({"log_level": 3}, "log_level: expected a string"),
    ({"source": {"loop": "yes"}}, "source.loop: expected a boolean"),
    ({"mqtt": {"port": True}}, "mqtt.port: expected an integer"),
    ({"model": {"devices": "CPU"}}, "model.devices: expected a list"),
    ({"device_id": "a/b"}, "device_id"),
    ({"source": {"uri": "http://"}}, "no host"),
    ({"source": {"uri": "rtsp://cam:99999/x"}}, "invalid port"),
    ({"mqtt": {"protocol": "4"}}, "mqtt.protocol"),
    ({"mqtt": {"tls_cert": "/etc/hostname"}}, "tls_cert and tls_key"),
    ({"output": {"mask_resolution": "huge"}}, "output.mask_resolution"),
    ({"model": {"inference_precision": "int4"}}, "model.inference_precision"),
    ({"source": "x"}, "source: must be a [table]"),
])
def test_errors_name_the_key(tmp_path, config_data, patch, needle):
    for key, value in patch.items():
        if isinstance(value, dict):
            config_data.setdefault(key, {}).update(value)
        else:
            config_data[key] = value
    with pytest.raises(ConfigError, match=r".*") as err:
        _load(tmp_path, config_data)
    assert needle in str(err.value)


def test_source_kinds(tmp_path):
    assert source_kind("0") == source_kind("/dev/video2") == "device"
    assert source_kind("rtsp://h/x") == "network"
    assert source_kind(str(tmp_path)) == "dir"
    assert source_kind(str(tmp_path / "nope.mp4")) == "missing"


def test_every_key_is_described():
    rows = describe()
    assert len(rows) >= 30 and all(help_ for _, _, _, help_ in rows)


def test_a_drift_enter_below_the_default_exit_says_which_default(tmp_path, config_data):
    """``drift_exit``'s default rose to 0.66 with bundle 3.2.0: a config that set only
    ``drift_enter`` (0.65 was valid before) is refused in one line that says the exit it
    clashes with is the default, and what to set, not a value the user never wrote."""
    config_data["quality"] = {"drift_enter": 0.65}
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, config_data)
    message = str(err.value)
    assert "quality.drift_exit" in message and "default" in message and "\n" not in message
    config_data["quality"] = {"drift_enter": 0.65, "drift_exit": 0.6}
    cfg, _ = _load(tmp_path, config_data)
    assert (cfg.quality.drift_enter, cfg.quality.drift_exit) == (0.65, 0.6)
