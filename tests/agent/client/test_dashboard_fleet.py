"""The dashboard's fleet model and HTTP endpoints, without a broker or a browser: status
ordering, a camera offline with its agent, and memory bounded whatever devices send."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

from edge_agent.client.dashboard import server
from edge_agent.client.dashboard.fleet import Fleet
from tools.broker import free_port

JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 100


def status(**fields) -> bytes:
    return json.dumps({"schema_version": 1, **fields}).encode()


def test_statuses_are_ordered_as_docs_mqtt_says():
    f = Fleet()
    f.handle("cam", "status", status(state="online", session="a", connection=1, seq=2))
    f.handle("cam", "status", status(state="degraded", session="a", connection=1, seq=1))
    assert f.cards["cam"].state == "online"  # an older status of the same session
    f.handle("cam", "status", status(state="offline", reason="connection lost", session="a",
                                     connection=1, seq=2))
    assert f.cards["cam"].state == "offline"  # the will of connection 1 sorts after it
    f.handle("cam", "status", status(state="online", session="b", connection=1, seq=1))
    f.handle("cam", "status", status(state="offline", reason="connection lost", session="a",
                                     connection=2, seq=5))
    assert f.cards["cam"].state == "online"  # a will of a session no longer shown: ignored


def test_a_camera_is_offline_while_its_agent_is():
    f = Fleet()
    f.handle("garden", "status", status(state="online", agent_id="edge-01"))
    f.handle("edge-01", "status", status(state="online", cameras={"garden": "online"}))
    _, cards = f.changes(0)
    assert {c["id"]: c["state"] for c in cards} == {"garden": "online", "edge-01": "online"}
    version, _ = f.changes(0)
    f.handle("edge-01", "status", status(state="offline", reason="connection lost",
                                         cameras={"garden": "offline"}))
    _, changed = f.changes(version)
    assert {c["id"]: (c["state"], c["own_state"]) for c in changed} == {
        "garden": ("offline", "online"), "edge-01": ("offline", "offline")}


def test_stats_fields_are_whitelisted_cleaned_and_cut():
    f = Fleet()
    f.handle("cam", "stats", json.dumps({
        "fps": {"capture": 15.0, "inference": float("nan"), "publish": "x"},
        "latency_ms": {"p50": 3.5, "p95": 1e308 * 10}, "device": "CPU\x1b[31m",
        "quality": {f"k{i}": i / 10 for i in range(50)}, "junk": "y" * 10000}).encode())
    view = f.changes(0)[1][0]
    assert view["fps"] == {"capture": 15.0, "inference": None, "publish": None}
    assert view["latency"] == {"p50": 3.5, "p95": None}
    assert view["device"] == "CPU?[31m" and len(view["quality"]) == 8
    assert "junk" not in json.dumps(view)
    f.handle("cam", "status", status(state="degraded", reason="r" * 5000))
    assert len(f.cards["cam"].reason) == 200


def test_retained_messages_are_seen_when_they_were_sent():
    f = Fleet(clock=lambda: 1000.0)
    f.handle("cam", "status", status(state="offline", ts=400.0), retained=True)
    assert f.cards["cam"].last_seen == 400.0
    f.handle("cam", "stats", b"{}")
    assert f.cards["cam"].last_seen == 1000.0


def test_memory_is_bounded_whatever_devices_send():
    f = Fleet(max_devices=50, max_json_bytes=4096, max_overlay_bytes=64 << 10,
              overlay_budget_bytes=256 << 10)
    for i in range(500):  # 10x the ids tracked
        f.handle(f"cam-{i}", "status", status(state="online"))
        f.handle(f"cam-{i}", "overlay", JPEG + b"\0" * (40 << 10))
    assert len(f.cards) == 50
    assert f.overlay_bytes <= 256 << 10  # the least recently updated overlays went first
    assert sum(1 for c in f.cards.values() if c.overlay) == 6
    f.handle("cam-1", "stats", b"{" + b" " * 5000 + b"}")
    f.handle("cam-1", "overlay", JPEG + b"\0" * (65 << 10))
    f.handle("cam-1", "overlay", b"GIF89a")
    f.handle("cam-1", "stats", b"[1, 2]")
    f.handle("cam-1", "stats", b"not json")
    f.handle("x" * 200, "stats", b"{}")
    f.handle("a+b", "stats", b"{}")
    f.handle("cam-1", "frame", b"{}")  # not a kind the dashboard reads
    counted = f.counters()
    assert counted["dropped"] == {"too_many_devices": 900, "bad_id": 2, "too_large": 2,
                                  "not_json": 1, "not_object": 1, "not_jpeg": 1,
                                  "overlay_budget": 44}
    assert counted["devices"] == 50


@pytest.fixture
def page_server():
    """A dashboard's HTTP side (no broker connection), read-only or operator."""
    started = []

    def start(*args: str):
        dash = server.Dashboard(server.parser().parse_args(
            ["--listen", f"127.0.0.1:{free_port()}", *args]))
        http = dash.serve()
        threading.Thread(target=http.serve_forever, daemon=True).start()
        started.append((dash, http))
        return dash, f"http://127.0.0.1:{http.server_address[1]}/"

    yield start
    for dash, http in started:
        dash.stop.set()
        http.shutdown()
        http.server_close()


def post(url: str, body: dict, token: str = "") -> int:
    req = urllib.request.Request(url + "api/command", method="POST",
                                 data=json.dumps(body).encode(),
                                 headers={"X-Segedge-Token": token})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_commands_need_operator_mode_and_the_page_token(page_server):
    _, ro = page_server()
    assert post(ro, {"id": "cam", "feature": "paused", "value": "ON"}) == 403
    html = urllib.request.urlopen(ro, timeout=5).read().decode()
    assert '"operator": false' in html and '"token": ""' in html
    dash, op = page_server("--operator")
    assert post(op, {"id": "cam", "feature": "paused", "value": "ON"}, "wrong") == 403
    # with the token, commands outside pause/resume/snapshot or bad ids are refused unsent
    assert post(op, {"id": "cam", "feature": "reload", "value": "PRESS"}, dash.token) == 400
    assert post(op, {"id": "a/b", "feature": "paused", "value": "ON"}, dash.token) == 400


def test_a_loopback_dashboard_answers_only_loopback_names(page_server):
    """DNS rebinding: a page of evil.example resolved to 127.0.0.1 sends Host evil.example."""
    _, url = page_server("--operator")
    rebound = urllib.request.Request(url, headers={"Host": "evil.example"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(rebound, timeout=5)
    assert refused.value.code == 403
    local = urllib.request.Request(url, headers={"Host": "localhost:8080"})
    assert urllib.request.urlopen(local, timeout=5).status == 200


def test_overlays_and_fleet_are_served(page_server):
    dash, url = page_server()
    dash.fleet.handle("cam", "overlay", JPEG)
    with urllib.request.urlopen(url + "overlay/cam.jpg", timeout=5) as r:
        assert r.headers["Content-Type"] == "image/jpeg" and r.read() == JPEG
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(url + "overlay/other.jpg", timeout=5)
    fleet = json.load(urllib.request.urlopen(url + "api/fleet", timeout=5))
    assert [c["id"] for c in fleet["cards"]] == ["cam"] and fleet["cards"][0]["overlay"] == 1


def test_an_unreachable_broker_is_one_line_and_exit_1(capsys):
    port = free_port()  # nothing listens there
    assert server.main(["--port", str(port), "--listen", f"127.0.0.1:{free_port()}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot reach the broker at 127.0.0.1:{port}" in err[0], err


def test_a_peer_that_stops_mid_request_is_dropped_and_a_bad_length_refused(page_server):
    """The least trusted peer of the page: a Content-Length that is no number gets a 400,
    and a request whose body never comes frees its thread (socket timeout), not hangs."""
    import socket
    import time

    dash, url = page_server("--operator")
    port = int(url.rsplit(":", 1)[1].strip("/"))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /api/command HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Segedge-Token: "
                     + dash.token.encode() + b"\r\nContent-Length: 1e3\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 400")
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"POST /api/command HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Segedge-Token: "
                     + dash.token.encode() + b"\r\nContent-Length: 1000\r\n\r\n{")
        t0 = time.monotonic()
        while sock.recv(4096):  # whatever it answers, the server ends the connection
            pass
        assert time.monotonic() - t0 < 15
