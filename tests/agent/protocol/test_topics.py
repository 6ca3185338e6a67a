"""Issue 17: where the agent may publish (pure rules), and the one publish gate of MqttComms.

- ``reply_topic_problem``: an MQTT 5 response topic is used only in the asker's own
  reply tree ``<prefix>/<asker>/reply/<suffix>`` (plain strings);
- ``publish_topic_problem`` and ``MqttComms._publish``: a wildcard, empty or NUL topic,
  or paho raising, is a counted and logged refusal, never an exception in the thread
  that published (finding 1 at its root);
- reconnecting: one attempt a second against a broker that stays down (finding 5).
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from edge_agent.config import MqttConfig
from edge_agent.mqtt import connection as mqtt_mod
from edge_agent.mqtt.connection import MqttComms
from edge_agent.protocol.messages import ModelInfo, Status
from edge_agent.protocol.topics import (
    REPLY_TOPIC_MAX_BYTES,
    publish_topic_problem,
    reply_topic_problem,
)
from tools.broker import free_port


@pytest.mark.parametrize("topic", [
    "segedge/pi-door/reply/1", "segedge/pi-door/reply/a/b/c", "segedge/pi-door/reply/é",
    "segedge/pi-door/reply/" + "x" * (REPLY_TOPIC_MAX_BYTES - len("segedge/pi-door/reply/")),
])
def test_a_reply_tree_topic_is_accepted(topic):
    assert reply_topic_problem("segedge", "pi-door", topic) is None


@pytest.mark.parametrize("topic,needle", [
    ("a/+/b", "wildcard"), ("#", "wildcard"), ("segedge/pi-door/reply/#", "wildcard"),
    ("segedge/pi-door/reply/+", "wildcard"), ("segedge/pi-door/reply/a\x00", "NUL"),
    ("segedge/front-door/mask", "not under segedge/pi-door/reply/"),
    ("segedge/dev-gpu/status", "not under"),
    ("homeassistant/switch/segedge_dev-gpu/paused/config", "not under"),
    ("segedge/front-door/paused/set", "not under"),
    ("segedge/other/reply/x", "not under"),
    ("segedge/pi-door/replyx/1", "not under"),
    ("segedge/pi-door/reply", "not under"),
    ("segedge/pi-door/reply/", "non-empty levels"),
    ("segedge/pi-door/reply//x", "non-empty levels"),
    ("segedge/pi-door/reply/x/", "non-empty levels"),
    ("/segedge/pi-door/reply/x", "not under"),
    ("", "not under"),
    ("segedge/pi-door/reply/\ud800", "UTF-8"),
    ("segedge/pi-door/reply/" + "x" * REPLY_TOPIC_MAX_BYTES, f"over {REPLY_TOPIC_MAX_BYTES}"),
    (b"segedge/pi-door/reply/x", "not text"),
    (None, "not text"),
])
def test_anything_else_is_refused_with_one_line(topic, needle):
    problem = reply_topic_problem("segedge", "pi-door", topic)
    assert problem is not None and needle in problem, problem
    assert "\n" not in problem and len(problem) < 200


def test_the_owner_and_prefix_are_literal():
    assert reply_topic_problem("site/segedge", "cam", "site/segedge/cam/reply/x") is None
    assert reply_topic_problem("segedge", "", "segedge//reply/x") is not None
    assert reply_topic_problem("segedge", "a/b", "segedge/a/b/reply/x") is not None


@pytest.mark.parametrize("topic,ok", [
    ("segedge/cam/mask", True), ("a", True), ("é/ü", True), ("a/+/b", False), ("#", False),
    ("a/#", False), ("", False), ("a\x00b", False), ("\ud800", False), (None, False),
    ("x" * 65536, False), ("x" * 65535, True),
])
def test_publish_topic_validity(topic, ok):
    assert (publish_topic_problem(topic) is None) == ok


def _status() -> Status:
    return Status(device_id="dev", state="online", ts=1.0, agent_version="0",
                  model=ModelInfo("m", "1", "FP32"), device="CPU")


def _connected_comms() -> MqttComms:
    """A real paho client that believes it is connected (nothing goes on a wire)."""
    comms = MqttComms(MqttConfig(port=free_port()), "dev", lambda k: _status())
    comms._connected, comms.connects = True, 1
    return comms


def test_a_wildcard_reply_topic_is_a_counted_refusal_not_an_exception(caplog):
    """Finding 1 at its root: paho raises ValueError for 'a/+/b'; the gate catches it."""
    comms = _connected_comms()
    for topic in ("a/+/b", "#", "", "x\x00"):
        assert comms.publish_reply(topic, "{}", b"c") is False
    assert comms.publish_failed == 4
    assert len([r for r in caplog.records if "publish to" in r.getMessage()]) == 1  # a minute


def test_paho_raising_is_caught_and_counted():
    comms = _connected_comms()

    def boom(*args, **kwargs):
        raise RuntimeError("client broke")

    comms.client.publish = boom
    assert comms.publish_reply("segedge/dev/reply/x", "{}") is False
    assert comms.publish_frame("{}") is False and comms.publish_overlay(b"x") is False
    assert comms.publish_mask("{}") is False
    assert comms.publish_failed == 4 and comms.dropped == 1


def test_an_unpublishable_spooled_message_does_not_block_the_spool():
    comms = _connected_comms()
    sent = []

    class Info:
        rc, mid = 0, 1

    real = comms.client.publish

    def publish(topic, payload, qos=0, retain=False, **kw):
        if "+" in topic:
            return real(topic, payload, qos=qos, retain=retain)  # paho's ValueError
        sent.append(topic)
        Info.mid += 1
        return Info()

    comms.client.publish = publish
    comms._connected = False
    comms.publish_retained("homeassistant/+/bad/config", "{}")
    comms.publish_stats(json.dumps({"seq": 1}))
    comms._connected = True
    comms.pump()
    assert sent == ["segedge/dev/stats"] and len(comms.spool) == 0
    assert comms.publish_failed == 1


def test_reconnect_attempts_against_a_broker_that_stays_down_are_about_one_a_second():
    """Finding 5: the retry rate is bounded (one TCP connect a second), so the agent is
    back within about a second of the broker's return whatever the outage length."""
    assert mqtt_mod.RECONNECT_S == 1
    comms = MqttComms(MqttConfig(port=free_port(), keepalive_s=5), "dev", lambda k: _status())
    comms.start()
    try:
        time.sleep(0.5)
        first = comms.attempts
        t0 = time.monotonic()
        time.sleep(6.0)
        rate = (comms.attempts - first) / (time.monotonic() - t0)
        assert 0.6 <= rate <= 1.3, rate  # ~1/s, never a tight loop
        assert comms.client._reconnect_max_delay == mqtt_mod.RECONNECT_S
        assert comms.fatal() is None
    finally:
        comms._stopping = True
        comms.client.disconnect()
        comms.client.loop_stop()


def test_a_broker_that_refuses_is_backed_off_and_a_reachable_one_is_not():
    comms = MqttComms(MqttConfig(port=free_port()), "dev", lambda k: _status())
    comms._backoff(True)
    assert comms.client._reconnect_max_delay == mqtt_mod.REFUSED_MAX_S
    comms._backoff(False)
    assert comms.client._reconnect_max_delay == mqtt_mod.RECONNECT_S


def test_threads_never_see_a_publish_exception():
    """Many threads publishing bad topics at once: none of them raises."""
    comms = _connected_comms()
    errors = []

    def worker():
        try:
            for _ in range(50):
                comms.publish_reply("a/+/b", "{}")
        except Exception as exc:  # pragma: no cover - the failure this test is about
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and comms.publish_failed == 200
