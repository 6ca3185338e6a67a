from __future__ import annotations

import pytest

from edge_agent.config import ConfigError, describe, load, source_kind
from tests.agent.helpers import to_toml


@pytest.fixture
def base(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"x")
    return {"device_id": "cam-01", "source": {"uri": str(clip)},
            "model": {"bundle": str(bundle)}}


def _load(tmp_path, data, env=None):
    path = tmp_path / "a.toml"
    path.write_text(to_toml(data))
    return load(str(path), env or {})


def test_defaults_and_types(tmp_path, base):
    cfg, ignored = _load(tmp_path, base)
    assert cfg.mqtt.port == 1883 and cfg.model.devices == ["CPU"] and ignored == []
    assert isinstance(cfg.source.fps, float)


def test_env_overrides(tmp_path, base):
    cfg, ignored = _load(tmp_path, base, {
        "SEGEDGE_MQTT_PORT": "2000", "SEGEDGE_SOURCE_LOOP": "false",
        "SEGEDGE_MODEL_DEVICES": '["npu", "CPU"]', "SEGEDGE_OUTPUT_MAX_PUBLISH_FPS": "2.5",
        "SEGEDGE_DEVICE_ID": "env-cam", "SEGEDGE_SOMETHING": "x", "SEGEDGE_CONFIG": "y"})
    assert (cfg.mqtt.port, cfg.source.loop, cfg.model.devices, cfg.output.max_publish_fps,
            cfg.device_id) == (2000, False, ["NPU", "CPU"], 2.5, "env-cam")
    assert ignored == ["SEGEDGE_SOMETHING"]


def test_password_sources(tmp_path, base):
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    base["mqtt"] = {"username": "u", "password_file": str(pw)}
    cfg, _ = _load(tmp_path, base)
    assert cfg.mqtt.password == "s3cret"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_password").write_text("fromcreds")
    base["mqtt"] = {"username": "u"}
    cfg, _ = _load(tmp_path, base, {"CREDENTIALS_DIRECTORY": str(creds)})
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
def test_errors_name_the_key(tmp_path, base, patch, needle):
    for key, value in patch.items():
        if isinstance(value, dict):
            base.setdefault(key, {}).update(value)
        else:
            base[key] = value
    with pytest.raises(ConfigError, match=r".*") as err:
        _load(tmp_path, base)
    assert needle in str(err.value)


def test_source_kinds(tmp_path):
    assert source_kind("0") == source_kind("/dev/video2") == "device"
    assert source_kind("rtsp://h/x") == "network"
    assert source_kind(str(tmp_path)) == "dir"
    assert source_kind(str(tmp_path / "nope.mp4")) == "missing"


def test_every_key_is_described():
    rows = describe()
    assert len(rows) >= 30 and all(help_ for _, _, _, help_ in rows)
