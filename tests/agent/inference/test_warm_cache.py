"""The deploy's segedge-warm-cache compiles what the agent will, into the agent's cache."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.bundle.manifest import OpenedBundle
from edge_agent.config import ModelConfig
from edge_agent.inference.engine import Engine
from tests.helpers.tiny_bundle import make_tiny_bundle

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "deploy/roles/segedge_agent/files/libexec/segedge-warm-cache"


def _blobs(cache: Path) -> set:
    return {p.name for p in cache.rglob("*") if p.is_file()}


@pytest.mark.parametrize("hint", ["auto", "throughput"])
def test_the_warm_cache_holds_every_graph_the_agent_compiles(tmp_path, hint):
    """It used to call the Engine with an old signature and report the TypeError as its
    result: the cache stayed cold on every release (the play never failed: exit 0 is its
    contract). Now it runs, and the agent's start compiles nothing new."""
    release = make_tiny_bundle(tmp_path, targets=("cpu",))
    cache = tmp_path / "cache"
    model = next((release / "cpu").glob("*.xml"))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--cache-dir", str(cache), "--model", str(model),
         "--performance-hint", hint, "--", "CPU"],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "error" not in result, result
    assert result["device"] == "CPU" and result["failures"] == {}
    assert result["hints"] == (["throughput", "latency"] if hint == "auto" else [hint])
    warmed = _blobs(cache)
    assert warmed
    # the agent's own start on that release: load, then the graphs with the class decision
    # and the figures at the agent's default threshold, under each hint
    engine = Engine(ModelConfig(bundle=str(release), devices=["CPU"], cache_dir=str(cache),
                                performance_hint=hint),
                    OpenedBundle.open(str(release), "cpu"))
    engine.load()
    engine.start(lambda *_: None, decide=True, quality=0.9)
    assert _blobs(cache) == warmed  # every compile was a cache hit


def test_a_missing_device_is_reported_not_raised(tmp_path):
    release = make_tiny_bundle(tmp_path, targets=("cpu",))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--cache-dir", str(tmp_path / "c"), "--model",
         str(next((release / "cpu").glob("*.xml"))), "--", "NPU"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "NPU" in result["failures"] and "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists(),
                    reason="needs root and setpriv to drop the capabilities")
def test_a_working_directory_the_user_cannot_search_does_not_abort_it(tmp_path):
    """The play runs it with `runuser -u segedge` from root's home: OpenVINO reading the
    model from memory looked up a relative path there and aborted the process (C++
    filesystem_error, exit 134, nothing on stdout), which failed the release on the rig.
    Here: root without its capabilities, in a directory only another user may enter."""
    release = make_tiny_bundle(tmp_path, targets=("cpu",))
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    os.chown(locked, 65534, 65534)
    cache = tmp_path / "cache"
    proc = subprocess.run(
        ["/usr/bin/setpriv", "--inh-caps=-all", "--bounding-set=-all", sys.executable,
         str(SCRIPT), "--cache-dir", str(cache), "--model",
         str(next((release / "cpu").glob("*.xml"))), "--", "CPU"],
        cwd=locked, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "error" not in result and result["device"] == "CPU"


def test_a_model_cache_the_runtime_cannot_import_is_compiled_around(tmp_path, monkeypatch,
                                                                      caplog):
    """OpenVINO 2022.3's CPU plugin fails with "map::at" importing a graph with our steps
    from its own cache (the rig's MYRIAD lane, once the warm cache worked: the agent exited
    at every start). The runtime here does not, so its compile fails the same way for any
    Core with a CACHE_DIR; the engine compiles such a graph afresh and says so."""
    from edge_agent.inference import ovcompat

    real = ovcompat.compile_model

    def like_2022_3(core, model, device, config):
        if core.get_property("CACHE_DIR"):
            raise RuntimeError("map::at")
        return real(core, model, device, config)

    monkeypatch.setattr(ovcompat, "compile_model", like_2022_3)
    release = make_tiny_bundle(tmp_path, targets=("cpu",))
    got = {}
    engine = Engine(ModelConfig(bundle=str(release), devices=["CPU"],
                                cache_dir=str(tmp_path / "cache")),
                    OpenedBundle.open(str(release), "cpu"))
    with caplog.at_level("WARNING", logger="segedge.inference"):
        engine.load()
        engine.start(lambda i, out, _fig: got.__setitem__(i, out), decide=True, quality=0.9)
    assert engine.device == "CPU" and engine.quality == 0.9  # the figures kept, too
    assert "the model cache" in caplog.text and "map::at" in caplog.text
    engine.submit(np.zeros((1, 64, 64, 3), np.uint8), 1)
    engine.drain()
    assert list(got) == [1]


@pytest.mark.parametrize("args, needle", [
    (["--performance-hint", "CUMULATIVE_THROUGHPUT"], "--performance-hint"),
    (["--quality-threshold", "nan"], "--quality-threshold"),
    (["--quality-threshold", "1e400"], "--quality-threshold"),
    (["--quality-threshold", "-0.5"], "--quality-threshold"),
    (["--quality-threshold", "x" * 10_000], "--quality-threshold"),
])
def test_bad_arguments_are_refused_in_one_line_before_any_compile(tmp_path, args, needle):
    """The role passes checked variables, but the script is a command on the device: a
    hint OpenVINO does not know or a NaN threshold must not become a compiled graph."""
    release = make_tiny_bundle(tmp_path, targets=("cpu",))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--cache-dir", str(tmp_path / "c"), "--model",
         str(next((release / "cpu").glob("*.xml"))), *args, "--", "CPU"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 2 and needle in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr) < 2000
    assert not (tmp_path / "c").exists()
