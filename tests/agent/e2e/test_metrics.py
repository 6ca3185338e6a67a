"""Prometheus metrics (issue 21): a real Prometheus (Debian's package) scrapes a running
agent, and the series are asserted through Prometheus's HTTP query API; off by default,
prometheus-client is not even imported; a bad or busy ``listen`` is one line, exit 78;
every metric the Grafana example queries is one the agent serves."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from importlib.util import find_spec
from pathlib import Path

import pytest

from tests.agent.helpers import ROOT, agent_config, to_toml, wait_until
from tests.conftest import require
from tools.broker import free_port

pytestmark = pytest.mark.e2e
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
SERIES = ("segedge_frames_captured_total", "segedge_frames_inferred_total",
          "segedge_frames_published_total", "segedge_frames_dropped_total",
          "segedge_frames_stale_total", "segedge_capture_to_publish_seconds_bucket",
          "segedge_capture_to_publish_seconds_count", "segedge_inference_seconds_bucket",
          "segedge_inference_seconds_count", "segedge_state", "segedge_capture_queue",
          "segedge_mqtt_connected", "segedge_mqtt_outbound_queue", "segedge_mqtt_spool",
          "segedge_model_info")


def _client() -> None:
    require(find_spec("prometheus_client") is not None,
            "prometheus-client (the metrics extra: scripts/setup.sh all)")


def query(port: int, expr: str):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
    except OSError:
        return []
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.fixture
def prometheus(tmp_path):
    require(os.path.exists(PROMETHEUS), "prometheus (apt-get install prometheus)")
    targets = tmp_path / "prometheus"
    targets.mkdir()
    port = free_port()

    def start(scrape: int):
        (targets / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: segedge\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{scrape}']\n")
        with open(targets / "prometheus.log", "wb") as log:
            proc = subprocess.Popen([PROMETHEUS, f"--config.file={targets / 'prometheus.yml'}",
                                     f"--storage.tsdb.path={targets / 'data'}",
                                     f"--web.listen-address=127.0.0.1:{port}"],
                                    stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        return port

    procs = []
    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def test_prometheus_scrapes_the_agent(prometheus, broker, tiny_bundle, clip, unique_id, agents,
                                      tmp_path):
    _client()
    listen = free_port()
    cam2 = f"{unique_id}-b"
    config = agent_config(tiny_bundle, str(clip), broker.host, broker.port, unique_id,
                          metrics={"listen": f"127.0.0.1:{listen}"})
    del config["source"]["uri"]  # two cameras: each names its own
    config["cameras"] = [{"id": f"{unique_id}-a", "uri": str(clip)}, {"id": cam2, "uri": str(clip)}]
    agent = agents(config)
    port = prometheus(listen)

    def up():
        return [r for r in query(port, f'segedge_frames_published_total{{camera="{cam2}"}}')
                if float(r["value"][1]) > 0]

    assert wait_until(up, 60), agent.log() + (
        Path(tmp_path / "prometheus" / "prometheus.log").read_text(errors="replace"))
    for name in SERIES:
        assert query(port, name), name
    cams = {r["metric"]["camera"] for r in query(port, "segedge_frames_inferred_total")}
    assert cams == {f"{unique_id}-a", cam2}
    # [quality]: the window's share of unsure pixels per camera; the tiny bundle has no
    # reference (no_reference): no drift score, never drifting
    unsure = wait_until(lambda: query(port, "segedge_quality_uncertain"), 20)
    assert {r["metric"]["camera"] for r in unsure} == cams
    assert all(0.0 <= float(r["value"][1]) <= 1.0 for r in unsure)
    assert {float(r["value"][1]) for r in query(port, "segedge_quality_drifting")} == {0.0}
    assert not query(port, "segedge_quality_drift_score")
    online = query(port, f'segedge_state{{camera="{cam2}",state="online"}}')
    assert float(online[0]["value"][1]) == 1.0
    assert float(query(port, "segedge_mqtt_connected")[0]["value"][1]) == 1.0
    info = query(port, "segedge_model_info")[0]["metric"]
    assert (info["name"], info["version"], info["device"], info["precision"]) == (
        "tiny", "0.0.1", "CPU", "INT8") and re.fullmatch(r"[0-9a-f]{64}", info["sha256"])
    expr = (f'histogram_quantile(0.5, rate(segedge_inference_seconds_bucket{{camera="{cam2}"}}'
            f'[5s]))')
    p50 = wait_until(lambda: query(port, expr), 20)  # a rate needs two scrapes
    assert p50 and 0 < float(p50[0]["value"][1]) < 5.0, p50
    assert agent.terminate() == 0, agent.log()


def test_metrics_off_by_default_imports_nothing(tmp_path):
    code = ("import sys\nfrom edge_agent import app, __main__\n"
            "from edge_agent.health import metrics\n"
            "assert 'prometheus_client' not in sys.modules, 'imported'\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("listen,words", [
    ("9108", "metrics.listen: must be HOST:PORT (e.g. 127.0.0.1:9108), got '9108'"),
    ("127.0.0.1:99999", "metrics.listen: must be HOST:PORT"),
])
def test_bad_listen_is_one_line(tmp_path, tiny_bundle, clip, listen, words):
    path = tmp_path / "agent.toml"
    path.write_text(to_toml({"source": {"uri": str(clip)}, "model": {"bundle": str(tiny_bundle)},
                             "metrics": {"listen": listen}}))
    res = subprocess.run([sys.executable, "-m", "edge_agent", "--config", str(path),
                          "--check-config"], cwd=str(ROOT), capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 78 and res.stderr.count("\n") == 1 and words in res.stderr, res


def test_busy_listen_address_exits_78(broker, tiny_bundle, clip, unique_id, agents):
    _client()
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        agent = agents(agent_config(tiny_bundle, str(clip), broker.host, broker.port,
                                    unique_id, metrics={"listen": address}))
        assert agent.proc.wait(60) == 78, agent.log()
    assert f"segedge-agent: configuration error: metrics.listen: cannot listen on {address}: " \
           f"Address already in use" in agent.log(), agent.log()


def test_grafana_example_queries_only_served_metrics():
    """What is verified about examples/grafana-dashboard.json: valid JSON, a Prometheus
    datasource input, and every metric its queries name is one the agent serves (not
    verified: that Grafana renders it; no Grafana here)."""
    board = json.loads((ROOT / "examples" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert exprs and board["__inputs"][0]["pluginId"] == "prometheus"
    served = {re.sub(r"_(bucket|count|sum)$", "", s) for s in SERIES}
    named = {m for e in exprs for m in re.findall(r"\bsegedge_[a-z_]+", e)}
    assert named and {re.sub(r"_(bucket|count|sum)$", "", m) for m in named} <= served, named
