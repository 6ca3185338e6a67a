"""[samples] and a camera's own ``samples`` table: off by default, on per camera."""

from __future__ import annotations

import pytest

from edge_agent.config import ConfigError, load
from tests.agent.helpers import _toml_value, to_toml


def _load(tmp_path, data, env=None):
    """to_toml, with a camera's dict values written as inline tables."""
    cameras = data.pop("cameras", [])
    text = to_toml(data)
    for table in cameras:
        text += "[[cameras]]\n" + "".join(
            f"{k} = {_inline(v)}\n" for k, v in table.items())
    path = tmp_path / "a.toml"
    path.write_text(text)
    return load(str(path), env or {})


def _inline(value):
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return _toml_value(value)


def _cameras(config_data, tmp_path, *tables):
    clip = config_data.pop("source")["uri"]
    config_data["device_id"] = "edge-01"
    config_data["cameras"] = [{"id": f"c{n}", "uri": clip, **t} for n, t in enumerate(tables)]
    return config_data


def test_samples_are_off_by_default_and_the_folder_is_relative_to_the_file(tmp_path,
                                                                           config_data):
    cfg, _ = _load(tmp_path, config_data)
    assert not cfg.samples.enabled and not cfg.cameras[0].samples.enabled
    assert cfg.samples.dir == "/var/lib/segedge/samples"
    config_data["samples"] = {"enabled": True, "dir": "samples", "per_minute": 1.0}
    cfg, _ = _load(tmp_path, config_data)
    assert cfg.samples.dir == str(tmp_path / "samples")
    camera = cfg.cameras[0]  # the single-camera form: [samples] itself
    assert camera.samples.enabled and camera.samples.per_minute == 1.0


def test_one_camera_opts_in_with_its_own_table(tmp_path, config_data):
    data = _cameras(config_data, tmp_path, {"samples": {"enabled": True, "per_minute": 0.5}},
                    {})
    data["samples"] = {"max_samples": 50}
    cfg, _ = _load(tmp_path, data)
    on, off = cfg.cameras
    assert on.samples.enabled and on.samples.per_minute == 0.5 and on.samples.max_samples == 50
    assert not off.samples.enabled and off.samples.per_minute == 2.0
    assert off.samples.max_samples == 50 and not cfg.samples.enabled
    assert on.samples is not off.samples is not cfg.samples


def test_the_environment_turns_every_camera_on(tmp_path, config_data):
    data = _cameras(config_data, tmp_path, {}, {"samples": {"enabled": False}})
    cfg, _ = _load(tmp_path, data, {"SEGEDGE_SAMPLES_ENABLED": "true",
                                    "SEGEDGE_SAMPLES_DIR": "/srv/samples"})
    assert [c.samples.enabled for c in cfg.cameras] == [True, False]
    assert cfg.samples.dir == "/srv/samples"


@pytest.mark.parametrize("table, needle", [
    ({"samples": {"dir": "/elsewhere"}}, "cameras[1].samples.dir: unknown key"),
    ({"samples": {"per_minute": 0}}, "cameras[1].samples.per_minute: must be > 0"),
    ({"samples": {"random_share": 1.5}}, "cameras[1].samples.random_share: must be"),
    ({"samples": {"enabled": "yes"}}, "cameras[1].samples.enabled: expected a boolean"),
    ({"samples": True}, "cameras[1].samples: must be a table"),
])
def test_a_cameras_bad_samples_table_is_refused_with_its_key(tmp_path, config_data, table,
                                                             needle):
    with pytest.raises(ConfigError, match=None) as err:
        _load(tmp_path, _cameras(config_data, tmp_path, table))
    assert needle in str(err.value), str(err.value)


@pytest.mark.parametrize("samples, needle", [
    ({"max_bytes": 10}, "samples.max_bytes: must be 1048576.."),
    ({"uncertain_above": float("nan")}, "samples.uncertain_above"),
    ({"enabled": True, "dir": ""}, "samples.dir: must not be empty"),
])
def test_bad_samples_values_are_refused(tmp_path, config_data, samples, needle):
    config_data["samples"] = samples
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, config_data)
    assert needle in str(err.value), str(err.value)
