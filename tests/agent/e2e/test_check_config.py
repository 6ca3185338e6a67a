"""``segedge-agent --check-config`` and the agent's start say what is wrong in one line
(issue 21): device names OpenVINO does not know, a section typo, ``--probe`` naming the
broker or camera that does not answer; relative paths resolve against the config's
folder; every command has ``--version`` and shows its defaults in ``--help``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent import __version__
from edge_agent.config import load
from tests.agent.helpers import ROOT, to_toml
from tools.broker import free_port

pytestmark = pytest.mark.e2e
AGENT = [sys.executable, "-m", "edge_agent"]


def run(cmd, cwd=ROOT, timeout=120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGEDGE_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(cwd),
                          env=env)


def config(tmp_path: Path, bundle: Path, clip: Path, **sections) -> Path:
    data = {"device_id": "cam-t", "source": {"uri": str(clip)},
            "model": {"bundle": str(bundle)}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    path = tmp_path / "agent.toml"
    path.write_text(to_toml(data))
    return path


def refused(res: subprocess.CompletedProcess, *words: str) -> None:
    shown = f"rc {res.returncode}\n{res.stdout}\n{res.stderr}"
    assert res.returncode == 78 and res.stdout == "", shown
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, shown
    assert res.stderr.startswith("segedge-agent: configuration error: "), shown
    assert all(w in res.stderr for w in words), shown


def test_misspelt_device_refused(tmp_path, tiny_bundle, clip):
    path = config(tmp_path, tiny_bundle, clip, model={"devices": ["GPUU"]})
    res = run(AGENT + ["--config", str(path), "--check-config"])
    refused(res, "model.devices: GPUU is not an OpenVINO device (known: CPU, GPU, NPU")


def test_misspelt_device_refused_at_start(tmp_path, tiny_bundle, clip):
    path = config(tmp_path, tiny_bundle, clip, model={"devices": ["CPUU", "CPU"]},
                  mqtt={"port": free_port()})
    refused(run(AGENT + ["--config", str(path)]), "model.devices: CPUU is not")


def test_devices_valid_elsewhere_pass_and_are_noted(tmp_path, tiny_bundle, clip):
    """A config is portable: GPU/NPU (absent on a CPU-only host), GPU.1 and MYRIAD (no
    plugin after OpenVINO 2022.3) pass; the line says which are on this machine."""
    path = config(tmp_path, tiny_bundle, clip,
                  model={"devices": ["gpu.1", "NPU", "MYRIAD", "CPU"]})
    res = run(AGENT + ["--config", str(path), "--check-config"])
    assert res.returncode == 0, res.stderr
    assert "devices GPU.1,NPU,MYRIAD,CPU (not on this machine: " in res.stdout, res.stdout
    assert "MYRIAD (no MYRIAD plugin in OpenVINO " in res.stdout, res.stdout


def test_no_listed_device_on_this_machine_exits_78_at_start(tmp_path, tiny_bundle, clip):
    """HDDL: a device family OpenVINO 2026 no longer ships, so present nowhere here."""
    path = config(tmp_path, tiny_bundle, clip, model={"devices": ["HDDL"]},
                  mqtt={"port": free_port()})
    res = run(AGENT + ["--config", str(path)])
    assert res.returncode == 78, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("segedge-agent: configuration error: model.devices: none of HDDL "
                           "is on this machine (present: "), res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("typo,words", [
    ("[mqqt]\nhost = \"x\"\n", ("[mqqt]: unknown section (sections: commands, frames_in, "
                                "homeassistant, metrics, model, mqtt,", "did you mean [mqtt]?")),
    ("[sauce]\nuri = \"x\"\n", ("[sauce]: unknown section", "did you mean [source]?")),
    ("devise_id = \"x\"\n", ("devise_id: unknown key (sections:", "top-level keys: device_id",
                             "did you mean device_id?")),
])
def test_section_typo_names_the_sections(tmp_path, typo, words):
    path = tmp_path / "agent.toml"
    path.write_text(typo)
    refused(run(AGENT + ["--config", str(path), "--check-config"]), *words)


def test_relative_paths_resolve_against_the_config_folder(tmp_path, tiny_bundle, clip):
    folder = tmp_path / "etc" / "segedge"
    folder.mkdir(parents=True)
    (folder / "ca.pem").write_text("x")
    os.symlink(tiny_bundle, folder / "bundle")
    os.symlink(clip, folder / "clip.mp4")
    path = folder / "agent.toml"
    path.write_text(to_toml({
        "device_id": "cam-r", "health_file": "run/health.json",
        "source": {"uri": "clip.mp4"}, "model": {"bundle": "bundle", "cache_dir": "cache"},
        "mqtt": {"tls_ca": "./ca.pem"}}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = run(AGENT + ["--config", str(path), "--check-config"], cwd=elsewhere)
    assert res.returncode == 0, res.stderr
    cfg, _ = load(str(path), environ={})
    assert cfg.source.uri == str(folder / "clip.mp4")
    assert cfg.model.bundle == str(folder / "bundle")
    assert (cfg.health_file, cfg.model.cache_dir, cfg.mqtt.tls_ca) == (
        str(folder / "run/health.json"), str(folder / "cache"), str(folder / "ca.pem"))
    # the environment's values stay relative to the working directory, as before
    os.chdir(elsewhere)
    try:
        os.symlink(clip, elsewhere / "env.mp4")
        cfg, _ = load(str(path), environ={"SEGEDGE_SOURCE_URI": "env.mp4"})
        assert cfg.source.uri == "env.mp4"
    finally:
        os.chdir(ROOT)


def test_relative_camera_uris_resolve_too(tmp_path, tiny_bundle, clip):
    os.symlink(clip, tmp_path / "a.mp4")
    path = tmp_path / "agent.toml"
    path.write_text(to_toml({"device_id": "edge-r", "model": {"bundle": str(tiny_bundle)},
                             "cameras": [{"id": "a", "uri": "a.mp4"},
                                         {"id": "b", "uri": "rtsp://192.0.2.1/x"},
                                         {"id": "c", "uri": "0"}]}))
    cfg, _ = load(str(path), environ={})
    assert [c.source.uri for c in cfg.cameras] == [str(tmp_path / "a.mp4"),
                                                    "rtsp://192.0.2.1/x", "0"]


def test_shipped_example_configs_pass_from_any_folder(tmp_path):
    for name in ("home-assistant.toml", "multi-camera.toml", "field-quality.toml"):
        res = run(AGENT + ["--config", str(ROOT / "examples" / name), "--check-config"],
                  cwd=tmp_path)
        assert res.returncode == 0 and "config OK" in res.stdout, name + res.stderr


def test_probe_says_which_part_failed(tmp_path, tiny_bundle, clip):
    camera_port = free_port()
    path = tmp_path / "agent.toml"
    path.write_text(to_toml({
        "device_id": "edge-p", "model": {"bundle": str(tiny_bundle)},
        "mqtt": {"port": free_port()},
        "cameras": [{"id": "door", "uri": f"rtsp://user:secret@127.0.0.1:{camera_port}/s"},
                    {"id": "file", "uri": str(clip)}]}))
    res = run(AGENT + ["--config", str(path), "--check-config", "--probe"])
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 69 and res.stdout == "" and len(lines) == 2, res.stderr
    assert lines[0].startswith("segedge-agent: probe failed: mqtt: broker 127.0.0.1:"), lines
    assert "cannot connect: connection refused" in lines[0], lines
    assert lines[1] == f"segedge-agent: probe failed: camera door: 127.0.0.1:{camera_port}: " \
                       f"connection refused", lines
    assert "secret" not in res.stderr


def test_probe_passes_when_all_answer(tmp_path, tiny_bundle, clip, broker):
    with socket.socket() as camera:  # a stream's TCP port that accepts
        camera.bind(("127.0.0.1", 0))
        camera.listen()
        path = tmp_path / "agent.toml"
        path.write_text(to_toml({
            "device_id": "edge-q", "model": {"bundle": str(tiny_bundle)},
            "mqtt": {"port": broker.port},
            "cameras": [{"id": "door", "uri": f"rtsp://127.0.0.1:{camera.getsockname()[1]}/s"},
                        {"id": "file", "uri": str(clip)}]}))
        res = run(AGENT + ["--config", str(path), "--check-config", "--probe"])
    assert res.returncode == 0 and "probed: broker and cameras answer" in res.stdout, \
        res.stdout + res.stderr


def test_probe_needs_check_config(tmp_path):
    res = run(AGENT + ["--probe"])
    assert res.returncode == 2 and "--probe goes with --check-config" in res.stderr


COMMANDS = {
    "segedge-agent": AGENT,
    "segedge-subscribe": [sys.executable, "-m", "edge_agent.client.subscriber"],
    "segedge-build": [sys.executable, "-m", "build_models.cli"],
    "send_frame.py": [sys.executable, str(ROOT / "examples" / "send_frame.py")],
    "segedge-demo": [sys.executable, "-m", "tools.demo"],
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_version_and_shows_defaults(name):
    res = run(COMMANDS[name] + ["--version"])
    assert res.returncode == 0 and res.stdout == f"{name} {__version__}\n", res
    if name == "segedge-build":
        res = run(COMMANDS[name] + ["fetch", "--help"])
        assert "(default: 60.0)" in res.stdout, res.stdout
        return
    res = run(COMMANDS[name] + ["--help"])
    assert res.returncode == 0 and "(default: " in res.stdout, res.stdout
