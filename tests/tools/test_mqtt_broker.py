"""The demo's embedded MQTT 3.1.1 broker, driven by real paho clients."""

from __future__ import annotations

import threading
import time
from typing import List, Tuple

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tools.mqtt_broker import MqttBroker, topic_matches

Received = List[Tuple[str, bytes, int, bool]]


@pytest.fixture
def embedded():
    broker = MqttBroker("127.0.0.1", 0).start()
    yield broker
    broker.stop()


def client(broker: MqttBroker, name: str, got: Received = None, subscribe: str = "",
           will: str = "") -> mqtt.Client:
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=name,
                    protocol=mqtt.MQTTv311)
    if will:
        c.will_set(will, b"offline", qos=1, retain=True)
    subscribed = threading.Event()
    if got is not None:
        c.on_message = lambda _c, _u, m: got.append((m.topic, m.payload, m.qos, m.retain))
        c.on_subscribe = lambda *_: subscribed.set()
        c.on_connect = lambda cl, *_: cl.subscribe(subscribe, qos=1)
    c.connect(broker.host, broker.port, keepalive=2)
    c.loop_start()
    if got is not None:
        assert subscribed.wait(5)
    return c


def wait_for(pred, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def test_topic_filters():
    assert topic_matches("a/+/c", "a/b/c") and not topic_matches("a/+/c", "a/b/d")
    assert topic_matches("a/#", "a") and topic_matches("a/#", "a/b/c")
    assert not topic_matches("a/+", "a/b/c") and not topic_matches("#", "$SYS/x")
    assert topic_matches("segedge/+/+", "segedge/cam/mask")


def test_qos_retained_and_filters(embedded):
    pub = client(embedded, "pub")
    pub.publish("segedge/cam/status", b"online", qos=1, retain=True).wait_for_publish(5)
    pub.publish("segedge/other/status", b"x", qos=1, retain=True).wait_for_publish(5)
    got: Received = []
    sub = client(embedded, "sub", got, "segedge/cam/+")
    for i in range(20):
        pub.publish("segedge/cam/mask", b"m%d" % i, qos=0)
    pub.publish("segedge/cam/stats", b"s", qos=1).wait_for_publish(5)
    assert wait_for(lambda: len(got) >= 22)
    time.sleep(0.3)
    status = [g for g in got if g[0] == "segedge/cam/status"]
    masks = [g for g in got if g[0] == "segedge/cam/mask"]
    assert status == [("segedge/cam/status", b"online", 1, True)]  # once, retained, no leaks
    assert [m[1] for m in masks] == [b"m%d" % i for i in range(20)]
    assert {m[2] for m in masks} == {0} and not any(m[3] for m in masks)  # QoS 0 stays 0
    assert ("segedge/cam/stats", b"s", 1, False) in got
    assert all(g[0].startswith("segedge/cam/") for g in got)
    pub.publish("segedge/cam/status", b"", qos=1, retain=True).wait_for_publish(5)  # clear
    late: Received = []
    other = client(embedded, "late", late, "segedge/#")
    time.sleep(0.3)
    assert [g[0] for g in late] == ["segedge/other/status"]
    for c in (pub, sub, other):
        c.disconnect()
        c.loop_stop()


def test_will_on_lost_connection_not_on_disconnect(embedded):
    got: Received = []
    watcher = client(embedded, "watcher", got, "dev/+/status")
    polite = client(embedded, "polite", will="dev/polite/status")
    polite.disconnect()
    polite.loop_stop()
    rude = client(embedded, "rude", will="dev/rude/status")
    rude.loop_stop()
    rude.socket().close()  # the connection drops without DISCONNECT
    assert wait_for(lambda: any(g[0] == "dev/rude/status" for g in got))
    time.sleep(0.3)
    assert not any(g[0] == "dev/polite/status" for g in got)
    watcher.disconnect()
    watcher.loop_stop()


def test_refuses_mqtt5_and_stops_cleanly(embedded):
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    refused = threading.Event()
    c.on_connect = lambda _c, _u, _f, rc, _p: rc.is_failure and refused.set()
    c.on_disconnect = lambda *_: refused.set()
    c.connect(embedded.host, embedded.port)
    c.loop_start()
    assert refused.wait(5)
    c.loop_stop()
    live = client(embedded, "live")
    embedded.stop()
    assert not embedded.acceptor.is_alive()
    assert all(not t.is_alive() for t in embedded.threads)
    live.loop_stop()
