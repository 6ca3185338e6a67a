"""Health, watchdog, liveness, probes and the MQTT spool: the pure parts, fast."""

from __future__ import annotations

import json
import logging
import socket
import ssl
import time

import pytest

from edge_agent.config import MqttConfig
from edge_agent.health.sdnotify import Notifier
from edge_agent.health.state import Health, summarize
from edge_agent.health.watchdog import Watchdog
from edge_agent.mqtt.connection import MqttComms, describe_error, describe_refusal, is_loopback
from edge_agent.protocol.messages import ModelInfo, Status
from edge_agent.sources.freshness import Liveness, probe, redact
from tests.helpers.mjpeg_server import MjpegServer
from tools.broker import free_port


def test_summarize_orders_components_and_joins_reasons():
    assert summarize({}).state == "online" and summarize({}).reason is None
    view = summarize({"mqtt": "mqtt: down", "source:cam-02": "source: b", "source": "source: a"})
    assert view.state == "degraded"
    assert view.reason == "source: a; source: b; mqtt: down"
    assert list(view.components) == ["source", "source:cam-02", "mqtt"]
    assert view.status_text() == "degraded: source: a; source: b; mqtt: down"


def test_health_changes_are_published_logged_and_written_once(tmp_path, caplog):
    path = tmp_path / "health.json"
    seen = []
    health = Health(str(path), Notifier({}), facts=lambda: {"masks_published": 3})
    take = lambda: seen.append(health.take_change())  # noqa: E731 - the main loop's tick
    caplog.set_level(logging.INFO, "segedge.health")
    assert health.set("mqtt", "mqtt: connection refused by 127.0.0.1:1")
    take()
    for _ in range(5):  # a retry with the same reason changes nothing
        assert not health.set("mqtt", "mqtt: connection refused by 127.0.0.1:1")
        take()
    assert health.set("source", "source: stream ended")
    take()
    assert health.flush()
    data = json.loads(path.read_text())
    assert data["state"] == "degraded" and data["masks_published"] == 3
    assert data["components"] == {"source": "source: stream ended",
                                  "mqtt": "mqtt: connection refused by 127.0.0.1:1"}
    assert health.set("mqtt", None) and health.set("source", None)
    take()
    assert health.flush()
    assert json.loads(path.read_text())["components"] == {}
    # one view per tick: the newest, nothing repeated, the short-lived "source only" skipped
    assert [v.state if v else None for v in seen] == ["degraded"] + [None] * 5 + [
        "degraded", "online"]
    assert caplog.text.count("connection refused") == 2  # degraded, then with the source too
    health.stop("shutdown")
    assert not health.set("source", "source: late")  # after stop: offline stays
    assert json.loads(path.read_text())["state"] == "offline" and health.state == "offline"


def test_liveness_drops_frames_after_a_gap_until_frames_flow():
    live = Liveness(stall_s=2.0, recover=3)
    live.connected()
    assert live.frame(0.0) == (True, True)  # the first frame of the agent's life
    live.lost()  # the stream ended: a new connection needs frames flowing
    live.connected()
    assert [live.frame(t) for t in (1.0, 1.1, 1.2)] == [(True, False), (True, False),
                                                         (True, True)]
    assert live.live
    # a buffered frame one read timeout later: stale, and the source is not live
    assert live.frame(3.3) == (False, False) and not live.live
    assert live.frame(5.4) == (False, False)  # another one: still not
    assert live.frame(5.5) == (False, False) and live.frame(5.6) == (False, False)
    assert live.frame(5.7) == (True, True)  # three in a row within stall/2: live again
    assert live.frame(6.5) == (True, False)  # a slow frame (< stall) is still fresh
    fresh = Liveness(stall_s=0.0)
    fresh.connected()
    assert fresh.frame(0.0) == (True, True) and fresh.frame(100.0)[0]  # 0 = never stale


def test_redact_hides_the_password():
    assert redact("rtsp://user:pa55@cam:554/x") == "rtsp://user:***@cam:554/x"
    assert redact("http://cam/x") == "http://cam/x"


def test_probe_says_why_a_camera_is_away():
    port = free_port()
    assert probe(f"http://127.0.0.1:{port}/cam.mjpg") == f"connection refused by 127.0.0.1:{port}"
    cam = MjpegServer(lambda i: b"\xff\xd8\xff\xd9", port).start()
    try:
        assert probe(f"http://127.0.0.1:{port}/cam.mjpg") is None
    finally:
        cam.stop()
    mute = socket.socket()  # accepts connections, never answers (a frozen server)
    mute.bind(("127.0.0.1", 0))
    mute.listen(4)
    try:
        port = mute.getsockname()[1]
        why = probe(f"rtsp://127.0.0.1:{port}/cam", timeout=0.3)
        assert why == f"127.0.0.1:{port} accepts connections but does not answer"
    finally:
        mute.close()
    assert probe("udp://127.0.0.1:5000") is None  # cannot be probed: the open decides


def test_mqtt_errors_say_what_and_where():
    assert describe_error(ConnectionRefusedError(111, "x"), "h", 1) == "connection refused by h:1"
    exc = ssl.SSLCertVerificationError(1, "x")
    exc.verify_message = "Hostname mismatch, certificate is not valid for 'localhost'."
    assert describe_error(exc, "localhost", 8883).startswith(
        "TLS: certificate verify failed (Hostname mismatch")
    assert describe_error(socket.timeout(), "h", 1) == "no answer from h:1 (timeout)"
    assert describe_refusal("Not authorized", "h", 1).startswith("not authorised")
    assert describe_refusal("Server unavailable", "h", 1) == \
        "h:1 refused the connection (Server unavailable)"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("10.0.0.5") and not is_loopback("broker.example")


def _status(state="online", reason=None):
    return Status("dev", state, 1.0, "0", ModelInfo("m", "1", "INT8"), "CPU", reason,
                  session="s1")


class _Info:
    def __init__(self, mid, rc=0):
        self.mid, self.rc = mid, rc


def _comms_with_fake_wire():
    comms = MqttComms(MqttConfig(), "dev", lambda k: _status("offline", "connection lost"))
    sent = []

    def publish(topic, payload, qos=0, retain=False):
        sent.append((topic.rsplit("/", 1)[-1], json.loads(payload), qos, retain))
        return _Info(len(sent))

    comms.client.publish = publish
    return comms, sent


def test_spool_keeps_status_and_stats_in_order_and_stamps_on_send():
    comms, sent = _comms_with_fake_wire()
    comms.publish_status(_status("degraded", "source: x"))  # before any connection or failure:
    assert len(comms.spool) == 0  # only kept as the current status
    comms._error = "connection refused by h:1"
    comms.publish_status(_status("degraded", "mqtt: connection refused by h:1"))
    for i in range(3):
        comms.publish_stats(json.dumps({"seq": i + 1}))
    assert len(comms.spool) == 4 and sent == []
    comms._connected, comms.connects = True, 1
    comms.pump()
    assert [(k, p.get("seq")) for k, p, _, _ in sent] == [("status", 1), ("stats", 1),
                                                          ("stats", 2), ("stats", 3)]
    assert sent[0][1]["connection"] == 1 and sent[0][3] is True  # retained, stamped on send
    comms.publish_status(_status())
    assert sent[-1][1]["seq"] == 2 and sent[-1][1]["state"] == "online"


def test_spool_is_bounded_and_counts_what_it_drops():
    from edge_agent.mqtt import connection as mqtt_mod

    comms, sent = _comms_with_fake_wire()
    for i in range(mqtt_mod.SPOOL_MAX + 7):
        comms.publish_stats(json.dumps({"seq": i + 1}))
    assert len(comms.spool) == mqtt_mod.SPOOL_MAX and comms.spool.dropped == 7


def test_paho_window_bounds_unacknowledged_messages():
    from edge_agent.mqtt import connection as mqtt_mod

    comms, sent = _comms_with_fake_wire()
    comms._connected, comms.connects = True, 1
    for i in range(mqtt_mod.WINDOW + 5):
        comms.publish_stats(json.dumps({"seq": i + 1}))
    assert len(sent) == mqtt_mod.WINDOW and len(comms.spool) == 5
    for mid in range(1, 6):
        comms._on_publish(None, None, mid, None, None)
    comms.pump()
    assert len(sent) == mqtt_mod.WINDOW + 5 and len(comms.spool) == 0


def test_will_carries_the_connection_it_ends():
    comms, _ = _comms_with_fake_wire()
    wills = []
    comms.client.will_set = lambda topic, payload, qos, retain: wills.append(json.loads(payload))
    comms._on_attempt()
    assert wills[-1]["connection"] == 1 and wills[-1]["state"] == "offline"
    assert wills[-1]["session"] == "s1" and wills[-1]["seq"] == 0


def test_plaintext_credentials_warn_once(caplog):
    caplog.set_level(logging.WARNING, "segedge.mqtt")
    cfg = MqttConfig(host="192.0.2.1", port=free_port(), username="cam", password="s3cret")
    comms = MqttComms(cfg, "dev", lambda k: _status("offline", "connection lost"))
    comms.client.connect_async = lambda *a, **k: None
    comms.client.loop_start = lambda: None
    comms.start()
    assert caplog.text.count("plaintext") == 1 and "s3cret" not in caplog.text
    caplog.clear()
    local = MqttComms(MqttConfig(username="cam", password="x"), "dev",
                      lambda k: _status("offline", "connection lost"))
    local.client.connect_async = lambda *a, **k: None
    local.client.loop_start = lambda: None
    local.start()
    assert "plaintext" not in caplog.text


class _FakePipeline:
    def __init__(self):
        self.is_alive, self.stall = True, 0.0

    def alive(self):
        return self.is_alive

    def inflight(self):
        return 2

    def stalled_for(self, now):
        return self.stall


class _FakeCapture:
    def __init__(self):
        self.thread_alive, self.finished, self.checked = True, False, 0

    def is_alive(self):
        return self.thread_alive

    def done(self):
        return self.finished

    def check_stall(self, now):
        self.checked += 1


def test_watchdog_pings_only_while_all_is_well(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "n.sock"))
    sock.settimeout(0.2)
    pipe, cap = _FakePipeline(), _FakeCapture()
    fatal = {"mqtt": None}
    dog = Watchdog(Notifier({"NOTIFY_SOCKET": str(tmp_path / "n.sock"),
                             "WATCHDOG_USEC": "2000000"}), pipe, [cap], lambda: fatal["mqtt"])
    assert dog.check(100.0) is None and sock.recv(64) == b"WATCHDOG=1" and cap.checked == 1
    pipe.stall = dog.stall_s + 1
    assert dog.check(200.0).startswith("inference stalled: 2 request(s)")
    pipe.stall = 0.0
    fatal["mqtt"] = "mqtt network thread died (error: 'H' format)"
    assert dog.check(300.0) == fatal["mqtt"]
    fatal["mqtt"] = None
    cap.thread_alive = False
    assert dog.check(400.0) == "capture thread died"
    cap.finished = True  # a finished file is not a death
    assert dog.check(500.0) is None
    pipe.is_alive = False
    assert dog.check(600.0) == "pipeline thread died"
    sock.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_dead_network_thread_is_reported():
    """paho's real network thread (found through its public loop, no private attribute)
    dies on an error that is not a network one: the watchdog's check says so."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed: every attempt fails

    def broken_attempt():
        raise ValueError("'H' format requires 0 <= number <= 65535")

    comms = MqttComms(MqttConfig(host="127.0.0.1", port=port), "dev",
                      lambda k: _status("offline", "connection lost"))
    assert comms.fatal() is None  # not started
    comms.client.on_attempt = broken_attempt
    comms.start()
    deadline = time.monotonic() + 10
    while comms.fatal() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert comms.fatal() == "mqtt network thread died"
    assert not comms.client.network_thread.is_alive()
    comms._stopping = True  # a stop in progress is not a death
    assert comms.fatal() is None


@pytest.mark.parametrize("host", ["127.0.0.1"])
def test_problem_has_a_grace_after_a_drop_but_not_before_the_first_connection(host):
    comms = MqttComms(MqttConfig(host=host, port=1), "dev",
                      lambda k: _status("offline", "connection lost"))
    assert comms.problem(0.0) == "mqtt: connecting to 127.0.0.1:1"
    comms._connected, comms.connects = True, 1
    assert comms.problem() is None
    comms._on_disconnect(None, None, None, "Unspecified error", None)
    down = comms._down_since
    assert comms.problem(down + 1.0) is None  # a blip inside the grace
    assert comms.problem(down + 5.0) == "mqtt: connection to 127.0.0.1:1 lost (Unspecified error)"
