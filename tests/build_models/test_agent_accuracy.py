"""Accuracy through the agent's own path equals the build's offline figure (issue 19 item 2):
the test split's JPEGs go in as frames at their own size, the real agent (its graph resizes
them) publishes masks to a real broker, and they are scored against the trimaps."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.build, pytest.mark.e2e]
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "agent_accuracy.py"


def _tool():
    spec = importlib.util.spec_from_file_location("agent_accuracy", SCRIPT)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_dice_through_the_agent_equals_the_offline_figure(tiny_build, tmp_path):
    bundle = tiny_build["bundle"]
    result = _tool().measure(bundle, tiny_build["data"], "test", "cpu", tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    precision = manifest["targets"]["cpu"]["precision"]
    book = manifest["evaluation"]["metrics"][precision]
    agent = result["agent"]
    assert agent["missing"] == [] and agent["images"] == manifest["evaluation"]["images"]
    # it finds some pets, so the comparison is not that of two all-background maps (pet IoU
    # 0 both). How well a 3-epoch model on 20 synthetic images learns depends on the CPU's
    # float paths: 0.079 on an Ice Lake VM, above 0.1 on a Sapphire Rapids one.
    assert book["fg_iou"] > 0.02 and agent["fg_iou"] > 0.02, (book, agent)
    for key in ("dice", "fg_iou", "fg_dice"):
        assert abs(agent[key] - book[key]) <= 0.003, (key, agent[key], book[key])


def test_scoring_counts_missing_masks_and_wrong_shapes(tiny_build):
    import numpy as np

    from build_models import data as pets

    tool = _tool()
    pairs = pets.scan_split(tiny_build["data"], "test").pairs
    result = tool.score({1: np.zeros((64, 64), np.uint8)}, pairs, (64, 64))
    assert result["images"] == 1 and len(result["missing"]) == len(pairs) - 1
    with pytest.raises(SystemExit, match="expected"):
        tool.score({1: np.zeros((8, 8), np.uint8)}, pairs, (64, 64))


def test_a_relative_out_folder_still_names_the_frames(tmp_path, monkeypatch):
    """The default ``--out`` is relative (bench-out/...); the agent reads a relative
    ``source.uri`` against its config's folder, so the config must name the frames folder
    absolutely (it named 'bench-out/.../frames' and the agent refused it, exit 78)."""
    import tomllib

    monkeypatch.chdir(tmp_path)
    text = _tool().agent_config(Path("bench-out/work/frames"), Path("bundle"), "cpu",
                                "127.0.0.1", 1883, "5")
    config = tomllib.loads(text)
    assert config["source"]["uri"] == str(tmp_path / "bench-out/work/frames")
    assert config["model"]["bundle"] == str(tmp_path / "bundle")
