"""``segedge-build repository``: the bundle as an OVMS / Triton model repository.

The served IR is run here with OpenVINO and compared with the agent's local engine on
the same frames; the configs are checked against each server's published rules in
tests/agent/e2e/test_inference_server.py (with the server's own tooling)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from build_models import cli
from edge_agent.bundle.manifest import OpenedBundle
from edge_agent.config import ModelConfig
from edge_agent.inference.engine import Engine
from tests.helpers.tiny_bundle import make_tiny_bundle


def assert_served_equals_local(bundle: Path, version_dir: Path, target: str) -> None:
    import openvino as ov

    opened = OpenedBundle.open(str(bundle), target)
    local = Engine(ModelConfig(bundle=str(bundle), devices=["CPU"]), opened)
    local.load()
    got = {}
    local.start(lambda i, out, _fig: got.__setitem__(i, out), decide=True)
    h, w = local.size_hw
    frames = [np.random.default_rng(i).integers(0, 255, (1, h, w, 3), np.uint8)
              for i in range(6)]
    for i, frame in enumerate(frames):
        local.submit(frame, i)
    local.drain()
    core = ov.Core()
    served = core.compile_model(core.read_model(str(version_dir / "model.xml")), "CPU",
                                {"PERFORMANCE_HINT": "THROUGHPUT"})
    assert [p.get_any_name() for p in served.inputs] == ["image"]
    assert served.output(0).get_any_name() == "classes"
    assert served.input(0).get_element_type() == ov.Type.u8
    for i, frame in enumerate(frames):
        out = served.create_infer_request().infer({"image": frame})[served.output(0)]
        assert out.dtype == np.uint8 and out.shape == (1, h, w)
        assert np.array_equal(out, got[i]), f"frame {i}"


def test_repository_layout_and_served_model(tmp_path, capsys):
    models = tmp_path / "models"
    first = make_tiny_bundle(models, version="0.0.1")
    second = make_tiny_bundle(models, version="0.0.2", targets=("cpu",))
    repo = tmp_path / "repository"
    assert cli.main(["repository", str(first), "--out", str(repo)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["version"] == 1 and len(printed["written"]) == 3
    assert cli.main(["repository", str(second), "--out", str(repo), "--targets", "cpu"]) == 0
    files = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file())
    assert files == sorted(
        [f"{t}/config.json" for t in ("cpu", "gpu", "npu")]
        + [f"{t}/tiny/config.pbtxt" for t in ("cpu", "gpu", "npu")]
        + [f"cpu/tiny/{n}/model.{x}" for n in (1, 2) for x in ("bin", "xml")]
        + [f"{t}/tiny/1/model.{x}" for t in ("gpu", "npu") for x in ("bin", "xml")])
    config = json.loads((repo / "cpu" / "config.json").read_text())["model_config_list"][0]
    assert config["config"]["name"] == "tiny" and config["config"]["base_path"] == "tiny"
    assert config["config"]["model_version_policy"] == {"latest": {"num_versions": 2}}
    assert 'dims: [ 1, 64, 64, 3 ]' in (repo / "cpu" / "tiny" / "config.pbtxt").read_text()
    assert_served_equals_local(first, repo / "cpu" / "tiny" / "1", "cpu")
    assert_served_equals_local(first, repo / "gpu" / "tiny" / "1", "gpu")  # FP16 weights
    # a bundle version with no digits cannot be a repository version: one line, exit 1
    third = make_tiny_bundle(models, version="beta", targets=("cpu",))
    assert cli.main(["repository", str(third), "--out", str(repo)]) == 1
    assert "no integer form" in capsys.readouterr().err
