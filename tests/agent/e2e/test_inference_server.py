"""Issue 22, parts 2-4: the bundle as a model repository, served by a real KServe v2
server on loopback (Triton inside PyPI's nvidia-pytriton, running the repository's IR
with OpenVINO: tools/kserve_server.py), and the agent offloading inference to it.

- the repository's OVMS config.json passes OVMS's own schema (model_server
  src/schema.cpp, transcribed in tests/helpers/ovms_config_schema.json) and its
  config.pbtxt parses as Triton's ModelConfig (tritonclient's model_config_pb2);
- masks from the server equal the local engine's, frame by frame, on the same clip;
- the server killed: `degraded`, reason `inference server unreachable at <url>`; back:
  `online` and masks again; stats and masks say where inference ran; tritonserver frozen
  (SIGSTOP) past the watchdog's stall time: `did not answer within 1 s`, the agent
  stays up; thawed: `online`; two cameras on one server both say so and come back;
- a model the server does not have: `degraded`, `model not ready: …`;
- `reload` to a version the server does not serve: refused with `model not ready`,
  the old version keeps serving;
- the server moves on to version 2 (the repository gained 0.0.2): `model not ready`
  for version 1; `reload` after `current` moved: the agent asks for version 2, which the
  server runs (Triton's per-version inference count), and the status is `online` again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

from build_models.repository import add_bundle
from edge_agent.protocol.encoding import decode
from tests.agent.e2e.test_commands import Client
from tests.agent.helpers import ROOT, agent_config, validator, wait_until
from tests.conftest import require
from tests.helpers.kserve import KServeServer, server_python
from tests.helpers.tiny_bundle import make_tiny_bundle
from tools.broker import free_port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Bundles 0.0.1 and 0.0.2 (``current`` -> 0.0.1), their repository and a server."""
    python = server_python()
    require(python is not None, "the model server venv (scripts/setup_model_server.sh: "
                                "/usr/bin/python3 + nvidia-pytriton from PyPI)")
    root = tmp_path_factory.mktemp("served")
    models = root / "tiny"
    for version in ("0.0.1", "0.0.2"):
        make_tiny_bundle(root, name="tiny", version=version, targets=("cpu",))
    (models / "current").symlink_to("0.0.1")
    repo = root / "repository"
    add_bundle(models / "0.0.1", repo)  # 0.0.2 joins in the reload test
    server = KServeServer(python, repo / "cpu", free_port(), free_port(), free_port(),
                          root / "server.log").start()
    yield {"models": models, "repo": repo, "server": server, "python": python}
    server.kill()


def _masks(c: Client, base: str, since: float = 0.0) -> List[Dict[str, Any]]:
    return c.json(f"{base}/mask", since)


def _status(c: Client, base: str) -> Dict[str, Any]:
    got = c.last(f"{base}/status")
    return json.loads(got) if got else {}


def _remote_cfg(served, broker, uri: str, device_id: str, source: Any = None,
                **model: Any) -> Dict[str, Any]:
    return agent_config(served["models"] / "current", uri, broker.host, broker.port,
                        device_id, model={"server": served["server"].url,
                                          "server_timeout_s": 1.0, **model},
                        source=source or {})


def test_repository_passes_each_servers_checker(served):
    repo = served["repo"] / "cpu"
    import jsonschema

    schema = json.loads((ROOT / "tests" / "helpers" / "ovms_config_schema.json").read_text())
    config = json.loads((repo / "config.json").read_text())
    jsonschema.validate(config, schema)
    entry = config["model_config_list"][0]["config"]
    assert (repo / entry["base_path"] / "1" / "model.xml").is_file()
    assert (repo / entry["base_path"] / "1" / "model.bin").is_file()
    bad = {"model_config_list": [{"config": {**entry, "nireq": -1}}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)  # the checker refuses what OVMS refuses
    # Triton's ModelConfig, as the tritonclient in the server venv ships it
    check = ("import sys; from google.protobuf import text_format; "
             "from tritonclient.grpc import model_config_pb2 as m; "
             "c = text_format.Parse(open(sys.argv[1]).read(), m.ModelConfig()); "
             "print(c.name, c.backend, c.input[0].data_type, list(c.input[0].dims), "
             "c.output[0].name, c.version_policy.latest.num_versions)")
    out = subprocess.run([served["python"], "-c", check, str(repo / "tiny" / "config.pbtxt")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "tiny openvino 2 [1, 64, 64, 3] classes 2", out.stdout
    broken = repo.parent / "broken.pbtxt"
    broken.write_text((repo / "tiny" / "config.pbtxt").read_text().replace("dims", "dimz"))
    out = subprocess.run([served["python"], "-c", check, str(broken)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0  # the parser does refuse a field Triton does not know


def test_masks_equal_local_engine(served, broker, clip, agents, unique_id):
    """Same clip, every frame inferred (realtime = false): identical class maps."""
    served["server"].ensure()
    c = Client(broker.host, broker.port, [f"segedge/{unique_id}-{who}/+"
                                          for who in ("local", "remote")])
    source = {"loop": False, "realtime": False, "fps": 20.0}
    local = agents(agent_config(served["models"] / "current", str(clip), broker.host,
                                broker.port, f"{unique_id}-local", source=source))
    remote = agents(_remote_cfg(served, broker, str(clip), f"{unique_id}-remote",
                                source=source, server_timeout_s=5.0))  # a loaded CI box
    assert local.proc.wait(60) == 0, local.log()[-2000:]
    assert remote.proc.wait(60) == 0, remote.log()[-2000:]
    time.sleep(0.5)
    got = {}
    for who in ("local", "remote"):
        got[who] = {m["frame_id"]: decode(m["mask"], m["encoding"])
                    for m in _masks(c, f"segedge/{unique_id}-{who}")}
    assert len(got["local"]) == 40 and set(got["remote"]) == set(got["local"]), \
        (sorted(got["local"]), sorted(got["remote"]), remote.log()[-2000:])
    differ = [f for f in got["local"] if not np.array_equal(got["local"][f], got["remote"][f])]
    assert not differ, f"frames whose masks differ: {differ}"
    assert any(m.any() for m in got["remote"].values())  # not all background
    masks = _masks(c, f"segedge/{unique_id}-remote")
    assert {m["device"] for m in masks} == {f"server {served['server'].url}"}
    stats = c.json(f"segedge/{unique_id}-remote/stats")
    assert stats and stats[-1]["device"] == f"server {served['server'].url}"
    assert stats[-1]["frames"]["published"] == 40
    assert {m["device"] for m in _masks(c, f"segedge/{unique_id}-local")} == {"CPU"}
    for kind, message in (("mask", masks[-1]), ("stats", stats[-1]),
                          ("status", c.json(f"segedge/{unique_id}-remote/status")[-1])):
        validator(kind).validate(message)  # the same schemas as with a local model
    c.client.loop_stop()


def test_server_killed_then_back(served, broker, clip, agents, unique_id, tmp_path):
    server: KServeServer = served["server"].ensure()
    base = f"segedge/{unique_id}"
    c = Client(broker.host, broker.port, [f"{base}/+"])
    cfg = _remote_cfg(served, broker, str(clip), unique_id)
    cfg["health_file"] = str(tmp_path / "health.json")
    agent = agents(cfg)
    assert wait_until(lambda: _status(c, base).get("state") == "online", 30), agent.log()
    assert wait_until(lambda: len(_masks(c, base)) >= 5, 10)
    before = server.inferences("tiny", 1)
    assert before >= 5  # the server did run them

    server.kill()
    t_kill = time.monotonic()
    assert wait_until(lambda: _status(c, base).get("state") == "degraded", 10), agent.log()
    reason = _status(c, base)["reason"]
    assert f"inference server unreachable at {server.url}" in reason, reason
    assert time.monotonic() - t_kill < 5
    health = json.loads(Path(cfg["health_file"]).read_text())
    assert health["state"] == "degraded" and "unreachable" in health["reason"]
    assert "inference server unreachable at" in agent.log()
    time.sleep(2.0)
    assert agent.alive()
    quiet = time.monotonic()

    server.start()
    assert wait_until(lambda: _status(c, base).get("state") == "online", 20), agent.log()
    assert wait_until(lambda: len(_masks(c, base, quiet)) >= 5, 10)
    assert agent.alive()

    # a server that hangs (tritonserver stopped: connections accepted by the kernel, no
    # answer) for longer than the watchdog's inference stall (10 s): `degraded`, not a
    # restart
    triton = server.triton_pid()
    os.kill(triton, signal.SIGSTOP)
    try:
        assert wait_until(lambda: _status(c, base).get("state") == "degraded", 10)
        reason = _status(c, base)["reason"]
        assert f"inference server at {server.url} did not answer within 1 s" in reason, reason
        time.sleep(12.0)
        assert agent.alive(), agent.log()[-2000:]
    finally:
        os.kill(triton, signal.SIGCONT)
    thawed = time.monotonic()
    assert wait_until(lambda: _status(c, base).get("state") == "online", 15), agent.log()
    assert wait_until(lambda: len(_masks(c, base, thawed)) >= 5, 10)
    c.client.loop_stop()


def test_model_not_ready_then_reload_switches_version(served, broker, clip, agents,
                                                      unique_id):
    server: KServeServer = served["server"].ensure()
    base = f"segedge/{unique_id}"
    c = Client(broker.host, broker.port, [f"{base}/+"])
    wrong = agents(_remote_cfg(served, broker, str(clip), f"{unique_id}-wrong",
                               server_model="nosuchmodel"))
    cw = Client(broker.host, broker.port, [f"segedge/{unique_id}-wrong/+"])
    wbase = f"segedge/{unique_id}-wrong"
    assert wait_until(lambda: "model not ready: nosuchmodel version 1 at " + server.url
                      in (_status(cw, wbase).get("reason") or ""), 30), wrong.log()
    assert _status(cw, wbase)["state"] == "degraded"
    wrong.kill()

    agent = agents(_remote_cfg(served, broker, str(clip), unique_id))
    assert wait_until(lambda: _status(c, base).get("state") == "online", 30), agent.log()
    models = served["models"]
    # `current` moved before the server has version 2: reload refused, 0.0.1 goes on
    (models / "current").unlink()
    (models / "current").symlink_to("0.0.2")
    r = c.request(f"{base}/reload/set", "PRESS", timeout=30)
    assert r["result"] == "refused", r
    assert r["reason"].startswith(f"reload: model not ready: tiny version 2 at {server.url}"), r
    t = time.monotonic()
    assert wait_until(lambda: len(_masks(c, base, t)) >= 3, 10)
    assert {m["model"]["version"] for m in _masks(c, base, t)} == {"0.0.1"}
    assert _status(c, base)["state"] == "online"
    (models / "current").unlink()
    (models / "current").symlink_to("0.0.1")
    # the build adds 0.0.2 to the repository; the server now serves version 2 only
    # (OVMS's default policy, latest 1): version 1 is gone, and the status says so
    add_bundle(models / "0.0.2", served["repo"])
    server.kill()
    server.start()
    # (unreachable while it restarts, then the version it no longer has)
    assert wait_until(lambda: "model not ready: tiny version 1 at " + server.url
                      in (_status(c, base).get("reason") or ""), 15), _status(c, base)
    assert _status(c, base)["state"] == "degraded"
    # the deploy moves `current`; reload: the agent asks for version 2, the server runs it
    (models / "current").unlink()
    (models / "current").symlink_to("0.0.2")
    r = c.request(f"{base}/reload/set", "PRESS", timeout=30)
    assert r["result"] == "accepted", r
    t = time.monotonic()
    assert wait_until(lambda: [m for m in _masks(c, base, t)
                               if m["model"]["version"] == "0.0.2"], 10)
    assert wait_until(lambda: server.inferences("tiny", 2) > 3, 10)
    assert wait_until(lambda: _status(c, base).get("state") == "online", 10), agent.log()
    c.client.loop_stop()


def test_two_cameras_share_the_server_and_its_outage(served, broker, clip, agents,
                                                     unique_id):
    """Both cameras name the outage in their status, keep capturing through it, and
    both come back; the agent's own status maps them."""
    server: KServeServer = served["server"].ensure()
    ids = [f"{unique_id}-a", f"{unique_id}-b"]
    c = Client(broker.host, broker.port, [f"segedge/{x}/+" for x in (unique_id, *ids)])
    config = _remote_cfg(served, broker, "", unique_id)
    del config["source"]["uri"]
    config["cameras"] = [{"id": x, "uri": str(clip), "fps": 10.0} for x in ids]
    agent = agents(config)
    assert wait_until(lambda: all(len(_masks(c, f"segedge/{x}")) >= 3 for x in ids), 30), \
        agent.log()
    assert wait_until(lambda: all(_status(c, f"segedge/{x}").get("state") == "online"
                                  for x in (unique_id, *ids)), 10), agent.log()
    server.kill()
    assert wait_until(lambda: all("inference server unreachable at " + server.url
                                  in (_status(c, f"segedge/{x}").get("reason") or "")
                                  for x in ids), 10), agent.log()
    assert wait_until(lambda: _status(c, f"segedge/{unique_id}").get("cameras")
                      == {x: "degraded" for x in ids}, 5), _status(c, f"segedge/{unique_id}")
    def captured(x: str) -> int:
        stats = c.json(f"segedge/{x}/stats")
        return stats[-1]["frames"]["captured"] if stats else -1

    assert wait_until(lambda: all(captured(x) >= 0 for x in ids), 5)
    before = {x: captured(x) for x in ids}
    # capture goes on through the outage (the newest frame waits for the server)
    assert wait_until(lambda: all(captured(x) > before[x] + 10 for x in ids), 6), before
    back = time.monotonic()
    server.start()
    assert wait_until(lambda: all(len(_masks(c, f"segedge/{x}", back)) >= 3 for x in ids),
                      20), agent.log()
    assert wait_until(lambda: all(_status(c, f"segedge/{x}").get("state") == "online"
                                  for x in (unique_id, *ids)), 10), agent.log()
    c.client.loop_stop()
