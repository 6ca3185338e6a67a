"""Bad configuration, tampered bundles and garbage frames."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tests.agent.helpers import ROOT, agent_config, scene, to_toml, wait_until

pytestmark = pytest.mark.e2e
EX_CONFIG = 78


def _check(tmp_path, config, env=None, extra=("--check-config",)):
    path = tmp_path / "agent.toml"
    path.write_text(config if isinstance(config, str) else to_toml(config))
    full_env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "edge_agent", "--config", str(path), *extra],
                          capture_output=True, text=True, env=full_env, timeout=60)


def _base(tiny_bundle, clip, **kw):
    return agent_config(tiny_bundle, str(clip), "127.0.0.1", 1883, "cam-01", **kw)


def test_check_config_ok(tmp_path, tiny_bundle, clip):
    res = _check(tmp_path, _base(tiny_bundle, clip))
    assert res.returncode == 0, res.stderr
    assert "config OK" in res.stdout and "tiny 0.0.1" in res.stdout


@pytest.mark.parametrize("change, env, needle", [
    ({"colour": "red"}, {}, "colour: unknown key"),
    ({"mqtt": {"port": "1883"}}, {}, "mqtt.port: expected an integer"),
    ({"mqtt": {"port": 70000}}, {}, "mqtt.port: must be 1..65535"),
    ({"source": {"uri": "rtsp://:554/x"}}, {}, "source.uri: bad URL"),
    ({"source": {"uri": "ftp://cam/x"}}, {}, "source.uri: bad URL"),
    ({"source": {"uri": "/nonexistent/clip.mp4"}}, {}, "source.uri: no such file"),
    ({"model": {"bundle": "/nonexistent/bundle"}}, {}, "model.bundle: no such directory"),
    ({"model": {"target": "myriad"}}, {}, "bundle has no target 'myriad'"),
    ({"model": {"devices": ["AUTO"]}}, {}, "model.devices"),
    ({"output": {"mask_encoding": "jpeg"}}, {}, "output.mask_encoding"),
    ({"mqtt": {"tls_ca": "/nonexistent/ca.pem"}}, {}, "mqtt.tls_ca: no such file"),
    ({"model": {"wat": 1}}, {}, "model.wat: unknown key"),
    ({}, {"SEGEDGE_MQTT_PORT": "abc"}, "mqtt.port (from SEGEDGE_MQTT_PORT): expected an integer"),
    ({}, {"SEGEDGE_MQTT_PROT": "5"}, "SEGEDGE_MQTT_PROT: unknown key"),
    ({}, {"SEGEDGE_OUTPUT_MAX_PUBLISH_FPS": "-1"}, "output.max_publish_fps: must be >= 0"),
])
def test_bad_config_exits_78(tmp_path, tiny_bundle, clip, change, env, needle):
    cfg = _base(tiny_bundle, clip)
    for key, value in change.items():
        if isinstance(value, dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    res = _check(tmp_path, cfg, env)
    assert res.returncode == EX_CONFIG, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines


def test_invalid_toml_and_missing_file(tmp_path):
    res = _check(tmp_path, "device_id = \n")
    assert res.returncode == EX_CONFIG and "invalid TOML" in res.stderr
    res = subprocess.run([sys.executable, "-m", "edge_agent", "--config", "/nonexistent.toml"],
                         capture_output=True, text=True, cwd=str(ROOT), timeout=60)
    assert res.returncode == EX_CONFIG and "not found" in res.stderr


def test_env_overrides_apply(tmp_path, tiny_bundle, clip):
    res = _check(tmp_path, _base(tiny_bundle, clip),
                 {"SEGEDGE_DEVICE_ID": "from-env", "SEGEDGE_MQTT_PORT": "2883",
                  "SEGEDGE_MODEL_DEVICES": "NPU,CPU"})
    assert res.returncode == 0, res.stderr
    assert "device from-env" in res.stdout and ":2883" in res.stdout and "NPU,CPU" in res.stdout


def test_tampered_bundle_refused(tmp_path, tiny_bundle, clip):
    bad = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bad)
    with open(bad / "cpu" / "model.bin", "r+b") as fh:
        fh.seek(10)
        fh.write(b"\xff\xfe")
    for extra in (("--check-config",), ()):  # the agent itself refuses it too
        res = _check(tmp_path, _base(bad, clip), extra=extra)
        assert res.returncode == EX_CONFIG, res.stderr
        assert "sha256 mismatch" in res.stderr and "cpu/model.bin" in res.stderr


@pytest.mark.parametrize("figures", ["[0.1, 1e999]", "[0.1, NaN]", "[0.1, 1.5]", "0.5",
                                     "[0.1, true]"])
def test_a_hostile_quality_reference_is_refused_at_start(tmp_path, tiny_bundle, clip, figures):
    """issue 20: the manifest's reference is checked like the rest: exit 78, one line."""
    bad = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bad)
    data = json.loads((bad / "manifest.json").read_text())
    data["reference"] = {"statistic": "uncertain", "threshold": 0.9, "splits": {"val": {
        "uncertain": "@", "margin": [0.9, 0.8], "coverage": [0.4, 0.4]}}}
    (bad / "manifest.json").write_text(json.dumps(data).replace('"@"', figures))
    for extra in (("--check-config",), ()):
        res = _check(tmp_path, _base(bad, clip), extra=extra)
        assert res.returncode == EX_CONFIG, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "manifest" in lines[0], lines


def test_garbage_frames_are_survived(broker, tmp_path, tiny_bundle, unique_id, agents,
                                     collectors):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "01_ok.png"), scene(1))
    cv2.imwrite(str(images / "02_gray.png"), cv2.cvtColor(scene(2), cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(images / "03_tiny.png"), scene(3)[:3, :2])
    cv2.imwrite(str(images / "04_bgra.png"), cv2.cvtColor(scene(4), cv2.COLOR_BGR2BGRA))
    (images / "05_notjpeg.jpg").write_bytes(b"this is not an image")
    cv2.imwrite(str(images / "06_big.jpg"), np.tile(scene(6), (8, 8, 1)))
    cv2.imwrite(str(images / "07_u16.png"), scene(7).astype(np.uint16) * 256)
    col = collectors(broker, unique_id)
    agent = agents(agent_config(tiny_bundle, str(images), broker.host, broker.port, unique_id,
                                # every frame inferred: a frame replaced while the graph
                                # compiles for a new size would not be the point here
                                source={"loop": False, "fps": 20.0, "realtime": False},
                                output={"mask_resolution": "frame"}))
    assert agent.proc.wait(30) == 0, agent.log()
    masks = col.of("mask")
    assert len(masks) == 6, [(m["frame_id"], m["width"], m["height"]) for m in masks]
    assert [(m["height"], m["width"]) for m in masks][2] == (3, 2)
    assert "unreadable image skipped" in agent.log()
    assert wait_until(lambda: col.last_state() == "offline", 5)


def test_agent_never_imports_torch():
    code = ("import sys, pkgutil, importlib, edge_agent\n"
            "names = [m.name for m in pkgutil.walk_packages(edge_agent.__path__, 'edge_agent.')]\n"
            "for name in names:\n"
            "    importlib.import_module(name)\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "print(len(names))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(ROOT), timeout=120)
    assert res.returncode == 0, res.stderr
    assert int(res.stdout.strip()) >= 30
