"""Samples for labelling in a running agent: written beside inference, never in its way."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.agent.helpers import agent_config, wait_until

pytestmark = pytest.mark.e2e
RANDOM_ONLY = {"enabled": True, "per_minute": 120.0, "random_share": 1.0, "max_samples": 5}


def _health(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def test_the_agent_saves_samples_and_keeps_the_bound(broker, tiny_bundle, clip, unique_id,
                                                     agents, collectors, tmp_path):
    root, health = tmp_path / "samples", tmp_path / "health.json"
    col = collectors(broker, unique_id)
    agent = agents(agent_config(tiny_bundle, str(clip), broker.host, broker.port, unique_id,
                                health_file=str(health),
                                samples={**RANDOM_ONLY, "dir": str(root)}))
    saved = lambda: _health(health).get("samples", {}).get(unique_id, {})  # noqa: E731
    assert wait_until(lambda: saved().get("dropped_oldest", 0) >= 2, 60), agent.log()
    folder = root / unique_id
    names = (folder / "annotations" / "trainval.txt").read_text().split()
    assert 4 <= len(names) <= 5 and all(n.startswith(f"segedge-{unique_id}-") for n in names)
    for name in names:
        side = json.loads((folder / "annotations/samples" / f"{name}.json").read_text())
        assert side["reason"] == "random" and side["model"]["version"] == "0.0.1"
        assert (folder / "images" / f"{name}.jpg").is_file()
    assert len(list((folder / "images").glob("segedge-*.jpg"))) <= 5
    assert saved()["stopped"] is None and col.last_state() == "online"
    assert agent.terminate() == 0, agent.log()


def test_a_read_only_sample_folder_stops_sampling_and_inference_goes_on(
        broker, tiny_bundle, clip, unique_id, agents, collectors, tmp_path):
    root, health = tmp_path / "ro", tmp_path / "health.json"
    root.mkdir()
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs",
                                  str(root)], capture_output=True, text=True)
        if mounted.returncode:
            pytest.skip(f"root without mount: {mounted.stderr.strip()}")
    else:
        root.chmod(0o555)
    try:
        col = collectors(broker, unique_id)
        agent = agents(agent_config(tiny_bundle, str(clip), broker.host, broker.port, unique_id,
                                    health_file=str(health),
                                    samples={**RANDOM_ONLY, "dir": str(root)}))
        stopped = lambda: _health(health).get("samples", {}).get(  # noqa: E731
            unique_id, {}).get("stopped")
        assert wait_until(stopped, 30), agent.log()
        before = len(col.of("mask"))
        assert wait_until(lambda: len(col.of("mask")) >= before + 10, 20), agent.log()
        assert col.last_state() == "online" and agent.alive()
        lines = [ln for ln in agent.log().splitlines() if "sampling stopped" in ln]
        assert len(lines) == 1 and ("Read-only" in lines[0] or "denied" in lines[0]), lines
        assert _health(health)["samples"][unique_id]["failed"] == 1
        assert agent.terminate() == 0, agent.log()
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(root)], check=False)
