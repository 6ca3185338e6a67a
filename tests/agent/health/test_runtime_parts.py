"""Stats, backoff, rate limit, queue policies, sd_notify, health file, messages vs schemas."""

from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest

from edge_agent.health.pacing import Backoff, RateLimiter
from edge_agent.health.sdnotify import Notifier
from edge_agent.health.state import write_health
from edge_agent.health.stats import Counters, LatencyWindow, ProcessUsage, percentile
from edge_agent.inference.pipeline import Reorder
from edge_agent.mqtt.connection import OutboundQueue
from edge_agent.protocol.messages import Frame as FrameMsg
from edge_agent.protocol.messages import Mask, ModelInfo, Stats, Status
from edge_agent.sources.slots import Frame, FrameSlots, next_ready
from tests.agent.helpers import validator


def test_percentile_matches_numpy():
    rng = np.random.default_rng(2)
    values = rng.random(101).tolist()
    for q in (0, 50, 95, 99, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert percentile([], 50) is None and percentile([3.0], 99) == 3.0


def test_latency_window_and_counters():
    win = LatencyWindow(maxlen=3)
    for v in (1, 2, 3, 4):
        win.add(v)
    assert win.take() == {"p50": 3, "p95": 3.9, "p99": 3.98, "count": 3}
    assert win.take()["count"] == 0 and win.take()["p50"] is None
    c = Counters()
    c.add("captured", 5)
    c.rates()
    c.add("captured", 2)
    assert c.snapshot()["captured"] == 7 and c.rates()["captured"] > 0
    probe = ProcessUsage()
    idle = probe.sample()
    t_end = time.process_time() + 0.3
    while time.process_time() < t_end:  # ~0.3 s of this thread's CPU
        pass
    busy = probe.sample()
    assert idle["rss_bytes"] > 10 * 2**20 and idle["threads"] >= 1
    assert busy["cpu_percent"] > 5.0  # the busy loop shows (idle reads ~0), even on a loaded box


def test_backoff_grows_caps_jitters_and_resets():
    b = Backoff(base=0.5, cap=4.0, rand=lambda: 1.0)
    assert [b.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.next_delay() == 0.5
    low = Backoff(base=1.0, cap=8.0, rand=lambda: 0.0)
    assert low.next_delay() == 0.5  # jitter: between half and all of the ceiling
    with pytest.raises(ValueError):
        Backoff(base=0)


def test_rate_limiter():
    lim = RateLimiter(10.0)
    allowed = sum(lim.allow(i * 0.01) for i in range(300))  # 100 fps for 3 s
    assert 29 <= allowed <= 31
    assert all(RateLimiter(0).allow(0.0) for _ in range(5))


def test_outbound_queue_drops_oldest():
    q = OutboundQueue(3)
    for i in range(5):
        q.append(("t", str(i), 0, False))
    got = []
    assert q.drain(lambda m: got.append(m[1]) or True) == 3
    assert q.dropped == 2 and got == ["2", "3", "4"] and len(q) == 0


def test_outbound_queue_drain_stops_at_first_failure():
    q = OutboundQueue(5)
    for i in range(4):
        q.append(("t", str(i), 0, False))
    sent = []

    def send(m):
        if m[1] == "2":
            return False
        sent.append(m[1])
        return True

    assert q.drain(send) == 2 and sent == ["0", "1"] and len(q) == 2
    assert q.drain(lambda m: sent.append(m[1]) or True) == 2 and sent == ["0", "1", "2", "3"]


def test_publish_mask_queues_only_while_disconnected():
    from edge_agent.config import MqttConfig
    from edge_agent.mqtt.connection import MqttComms

    comms = MqttComms(MqttConfig(), "dev", "{}")
    results = []
    comms._send = lambda item: results.append(item) or False  # paho refuses
    assert comms.publish_mask("a") is False and len(comms.queue) == 1  # disconnected: queued
    comms._connected = True
    assert comms.publish_mask("b") is False
    assert len(comms.queue) == 1 and comms.queue.dropped == 1  # connected: dropped, not queued


def test_latest_frame_wins_per_camera_and_counts_drops():
    slots = FrameSlots()
    slot = slots.slot("a")
    img = np.zeros((1, 1, 3), np.uint8)
    assert slot.put(Frame(1, img, 0.0, 0.0)) is False
    assert slot.put(Frame(2, img, 0.0, 0.0)) is True
    assert slot.depth() == 1
    camera_id, frame = slots.take(0.01)
    assert (camera_id, frame.frame_id) == ("a", 2) and slots.take(0.01) is None
    threading.Timer(0.05, lambda: slot.put(Frame(3, img, 0.0, 0.0))).start()
    assert slots.take(2.0)[1].frame_id == 3
    assert slots.put("gone", Frame(4, img, 0.0, 0.0)) == (False, None)  # no such camera


def test_round_robin_serves_every_camera_with_a_frame_in_turn():
    assert next_ready(["a", "b", "c"], lambda c: True, None) == "a"
    assert next_ready(["a", "b", "c"], lambda c: True, "a") == "b"
    assert next_ready(["a", "b", "c"], lambda c: c != "b", "a") == "c"
    assert next_ready(["a", "b", "c"], lambda c: c == "a", "a") == "a"  # alone: again
    assert next_ready(["a", "b"], lambda c: False, "a") is None
    assert next_ready(["a", "b"], lambda c: True, "gone") == "a"
    assert next_ready([], bool, None) is None
    slots = FrameSlots()
    img = np.zeros((1, 1, 3), np.uint8)
    for cid in ("fast", "slow", "dead"):
        slots.add(cid)
    served = []
    for i in range(30):  # 'fast' always has a frame, 'slow' every third round, 'dead' never
        slots.put("fast", Frame(i, img, 0.0, 0.0))
        if i % 3 == 0:
            slots.put("slow", Frame(i, img, 0.0, 0.0))
        served.append(slots.take(0.01)[0])
    assert "dead" not in served and served.count("slow") == 10  # each slow frame was served
    assert served.count("fast") == 20  # the rest: the fast camera, never blocked
    slots.remove("slow")
    assert slots.depth("slow") == 0 and slots.depth() <= 1


def test_reorder_releases_in_submission_order():
    r = Reorder()
    for seq in (2, 0, 3):
        r.put(seq, seq)
    assert r.pop(0.01) == 0 and r.pop(0.01) is None and len(r) == 2
    r.put(1, 1)
    assert [r.pop(0.01) for _ in range(3)] == [1, 2, 3]


def test_reorder_skips_a_result_that_never_comes():
    from edge_agent.inference.pipeline import SKIPPED

    r = Reorder(gap_timeout=0.05)
    r.put(1, "one")
    assert r.pop(0.01) is None  # 0 missing, not yet given up
    time.sleep(0.06)
    assert r.pop(0.01) is SKIPPED and r.skipped == 1
    assert r.pop(0.01) == "one"
    r.put(0, "late")  # a late result for a skipped number is ignored
    assert len(r) == 0 and r.pop(0.01) is None


def test_sd_notify_sends_datagrams(tmp_path):
    path = str(tmp_path / "n.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(1)
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"})
    assert n.enabled and n.watchdog_interval_s == 2.0
    assert n.ready("ok") and n.watchdog()
    assert sock.recv(100) == b"READY=1\nSTATUS=ok" and sock.recv(100) == b"WATCHDOG=1"
    sock.close()
    off = Notifier({})
    assert not off.enabled and not off.ready() and off.watchdog_interval_s == 0
    assert Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1"}) \
        .watchdog_interval_s == 0


def test_health_file_is_atomic_json(tmp_path):
    path = tmp_path / "sub" / "health.json"
    write_health(str(path), {"state": "online", "ts": time.time()})
    assert json.loads(path.read_text())["state"] == "online"
    assert [p.name for p in path.parent.iterdir()] == ["health.json"]
    write_health("", {})  # disabled: no error
    write_health("/proc/forbidden/health.json", {})  # unwritable: no error


def test_messages_match_schemas():
    info = ModelInfo("m", "1", "INT8")
    st = Status("cam", "degraded", 1.0, "0.1.0", info, "CPU", "source: gone", {"NPU": "x"},
                session="a1b2c3", seq=1, connection=1)
    validator("status").validate(json.loads(st.to_json()))
    mk = Mask("cam", 3, 1.0, 1.1, 100.0, 4, 2, 8, 4, ["bg", "pet"], {"bg": 0.5, "pet": 0.5},
              "rle", {"size": [2, 4], "counts": "04"}, info, "CPU")
    validator("mask").validate(json.loads(mk.to_json()))
    sx = Stats("cam", 1.0, 2.0, 5.0, {"capture": 1, "inference": 1, "publish": 1},
               {"p50": None, "p95": None, "p99": None, "count": 0},
               {"captured": 1, "inferred": 1, "dropped": 0, "published": 1},
               {"capture": 0, "inflight": 0, "reorder": 0, "mqtt_outbound": 0}, "CPU", "INT8",
               "f32", 2, info, {"rss_bytes": 1, "cpu_percent": 0.0, "threads": 3}, "online",
               session="a1b2c3", seq=1)
    validator("stats").validate(json.loads(sx.to_json()))
    fr = FrameMsg("cam", 3, 1.0, 8, 4, "/9j/4AAQ")
    validator("frame").validate(json.loads(fr.to_json()))
    bad = json.loads(st.to_json())
    bad["state"] = "sleepy"
    with pytest.raises(Exception, match="sleepy"):
        validator("status").validate(bad)


def test_rate_limiter_averages_with_uneven_input():
    lim = RateLimiter(10.0)
    allowed = [t for t in (i / 12.0 for i in range(120)) if lim.allow(t)]  # 12 fps for 10 s
    assert 98 <= len(allowed) <= 101
    gaps = np.diff(allowed)
    assert gaps.min() >= 0.05 - 1e-9  # never closer than half a period


def test_infer_stall_period():
    from edge_agent.health.watchdog import INFER_STALL_MIN_S, infer_stall_s

    assert infer_stall_s(0.0) == INFER_STALL_MIN_S and infer_stall_s(30.0) == 60.0


class _Msg:
    def __init__(self, topic, payload):
        self.topic, self.payload = topic, payload


def test_subscriber_survives_bad_messages(tmp_path):
    from edge_agent.client.subscriber import Subscriber, safe_device_id

    sub = Subscriber("127.0.0.1", 1, out=str(tmp_path), quiet=True)
    for topic, payload in (("segedge/d/status", b"[1, 2]"), ("segedge/d/frame", b'{"image": "!!"}'),
                           ("segedge/d/mask", b"not json"), ("segedge/d/frame", b"{}"),
                           ("segedge/../mask", b'{"mask": "", "encoding": "png"}')):
        sub._on_message(None, None, _Msg(topic, payload))  # must not raise
    assert sub.bad_messages >= 3
    assert not any(safe_device_id(d) for d in (".", "..", "a/b", ""))
    assert safe_device_id("cam-01")


def test_capture_read_error_is_a_read_failure():
    import cv2

    from edge_agent.config import SourceConfig
    from edge_agent.sources.capture import Capture

    class BadReader:
        is_file, kind, fps = False, "network", 0.0

        def read(self):
            raise cv2.error("boom")

    cap = Capture(SourceConfig(uri="rtsp://x/y"), FrameSlots().slot("c"), threading.Event(),
                  on_state=lambda ok, r: None, on_frame=lambda d: None)
    assert cap._pump(BadReader()).startswith("read failed")
