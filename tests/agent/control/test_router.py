"""CommandRouter: limiter -> parse -> apply -> the messages to publish; then the same
router behind a paho client on a real Mosquitto, asked by MQTT 5 and 3.1.1 clients."""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path

import jsonschema
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.control import rules as c
from edge_agent.control.router import CommandRouter, Outgoing
from edge_agent.control.rules import CommandState
from edge_agent.health.pacing import TokenBucket

SCHEMAS = Path(c.__file__).parents[1] / "protocol" / "schemas"


def router(now=None, cams=("cam-01",), agent="cam-01", **kw):
    clock = (lambda: now[0]) if now is not None else time.monotonic
    return CommandRouter("segedge", agent, {i: CommandState() for i in cams},
                         bucket=TokenBucket(5.0, 10, clock=clock), clock=clock, **kw)


def topics(handled):
    return [(o.topic, o.payload, o.retain) for o in handled.outgoing]


def test_setting_command_publishes_state_and_settings():
    r = router()
    h = r.handle("segedge/cam-01/max_publish_fps/set", b"2.5", ts=1.0)
    assert h.reply.accepted and h.log is None
    assert r.state("cam-01").max_publish_fps == 2.5
    out = topics(h)
    assert out[0] == ("segedge/cam-01/max_publish_fps/state", "2.5", True)
    assert out[1][0] == "segedge/cam-01/settings" and json.loads(out[1][1])["max_publish_fps"] \
        == 2.5
    assert len(out) == 2  # no response topic: no reply message (3.1.1)


def test_refusal_republishes_the_unchanged_state_and_logs():
    r = router()
    h = r.handle("segedge/cam-01/paused/set", b"maybe")
    assert not h.reply.accepted and "expected ON or OFF" in h.log
    assert ("segedge/cam-01/paused/state", "OFF", True) in topics(h)
    assert r.state("cam-01") == CommandState()


def test_mqtt5_reply_carries_the_correlation_data():
    r = router()
    h = r.handle("segedge/cam-01/paused/set", b"ON", response_topic="segedge/cam-01/reply/me",
                 correlation_data=b"\x01\x02")
    reply = [o for o in h.outgoing if o.topic == "segedge/cam-01/reply/me"]
    assert len(reply) == 1 and not reply[0].retain and reply[0].correlation_data == b"\x01\x02"
    assert json.loads(reply[0].payload)["result"] == "accepted"


def test_actions_are_pending_until_their_hook_ran():
    r = router()
    h = r.handle("segedge/cam-01/reload/set", b"PRESS", response_topic="segedge/cam-01/reply/r",
                 correlation_data=b"7")
    assert h.action is not None and h.action.feature == "reload" and h.outgoing == ()
    done = r.finish(h.action, "bundle refused: manifest.json missing", ts=3.0)
    assert done.reply.result == "refused" and "manifest.json missing" in done.log
    assert done.outgoing[0].topic == "segedge/cam-01/reply/r"
    assert done.outgoing[0].correlation_data == b"7"
    ok = r.finish(r.handle("segedge/cam-01/snapshot/set", b"").action, None)
    assert ok.reply.accepted and ok.outgoing == () and ok.log is None


def test_ids_and_topics_it_does_not_own():
    r = router(cams=("cam-a", "cam-b"), agent="host1")
    assert r.subscriptions() == ("segedge/host1/+/set", "segedge/cam-a/+/set",
                                 "segedge/cam-b/+/set")
    assert not r.handle("segedge/cam-a/reload/set", b"").reply.accepted
    assert r.handle("segedge/host1/reload/set", b"").action is not None
    assert not r.handle("segedge/host1/paused/set", b"ON").reply.accepted
    assert not r.handle("segedge/other/paused/set", b"ON").reply.accepted
    h = r.handle("elsewhere/x", b"ON")
    assert h.reply is None and "ignored" in h.log
    assert r.handle("segedge/cam-b/paused/set", b"ON").reply.accepted
    assert r.state("cam-b").paused and not r.state("cam-a").paused
    assert len(router().subscriptions()) == 1  # one camera: agent id == camera id


def test_a_flood_is_bounded_and_logged_rarely():
    now = [0.0]
    r = router(now)
    results = [r.handle("segedge/cam-01/max_publish_fps/set", b"3") for _ in range(10_000)]
    handled = [h for h in results if h.reply is not None]
    logs = [h.log for h in results if h.log]
    assert len(handled) == 10 and len(logs) == 1 and "9990" not in logs[0]
    now[0] += 61.0
    later = r.handle("segedge/cam-01/paused/set", b"ON")
    assert later.reply.accepted  # the bucket refilled
    for _ in range(50):
        r.handle("segedge/cam-01/paused/set", b"ON")
    assert r.bucket.dropped > 9990


@pytest.mark.parametrize("response_topic", [
    "a/+/b", "#", "segedge/cam-01/mask", "segedge/cam-01/status",
    "homeassistant/switch/segedge_cam-01/paused/config", "segedge/cam-01/paused/set",
    "segedge/other/reply/x", "segedge/cam-01/reply", "segedge/cam-01/reply/",
    "segedge/cam-01/reply//x", "segedge/cam-01/reply/+", "segedge/cam-01/reply/x\x00",
    "segedge/cam-01/reply/" + "x" * 300])
def test_a_response_topic_outside_the_ids_reply_tree_refuses_the_command_whole(response_topic):
    """Issue 17 (2, 3): the command is not applied, nothing is published, it is counted,
    and the refusal is logged once per id per minute."""
    now = [0.0]
    r = router(now)
    h = r.handle("segedge/cam-01/paused/set", b"ON", response_topic=response_topic,
                 correlation_data=b"1")
    assert h.outgoing == () and h.reply is None and h.commit is None and h.action is None
    assert h.count == "reply_topic_refused" and "not applied" in h.log
    assert r.state("cam-01") == CommandState()  # not paused
    again = r.handle("segedge/cam-01/paused/set", b"ON", response_topic=response_topic)
    assert again.log is None and again.count == "reply_topic_refused"  # logged once
    now[0] += 61.0
    assert r.handle("segedge/cam-01/paused/set", b"ON", response_topic=response_topic).log
    assert r.handle("segedge/cam-01/reload/set", b"", response_topic=response_topic
                    ).action is None


def test_decide_changes_nothing_until_commit():
    """Issue 17 (3): the caller persists between decide and commit."""
    r = router()
    h = r.decide("segedge/cam-01/paused/set", b"ON", response_topic="segedge/cam-01/reply/a")
    assert h.reply.accepted and h.reply.changed and h.commit == ("cam-01", CommandState(True))
    assert r.state("cam-01") == CommandState()
    r.commit(h)
    assert r.state("cam-01").paused
    un = r.unsaved(r.decide("segedge/cam-01/max_publish_fps/set", b"3"), "disk full",
                   "segedge/cam-01/reply/a", b"9")
    assert un.reply.result == "refused" and "disk full" in un.reply.reason and un.commit is None
    assert ("segedge/cam-01/max_publish_fps/state", "10.0", True) in topics(un)
    assert un.outgoing[-1].topic == "segedge/cam-01/reply/a"
    assert r.state("cam-01").max_publish_fps == 10.0


def test_a_rate_limited_command_is_counted_and_answered_when_asked():
    """Issue 17 (9): a command dropped by the token bucket is counted and, with a
    response topic in its id's reply tree, answered (never applied)."""
    now = [0.0]
    r = router(now)
    for _ in range(10):
        r.handle("segedge/cam-01/max_publish_fps/set", b"3")
    h = r.handle("segedge/cam-01/paused/set", b"ON", response_topic="segedge/cam-01/reply/op",
                 correlation_data=b"c")
    assert h.count == "rate_limited" and h.commit is None and not r.state("cam-01").paused
    (out,) = h.outgoing
    assert out.topic == "segedge/cam-01/reply/op" and out.correlation_data == b"c"
    body = json.loads(out.payload)
    assert body["result"] == "refused" and body["reason"].startswith("rate_limited:")
    assert body["feature"] == "paused" and body["device_id"] == "cam-01"
    jsonschema.Draft202012Validator(
        json.loads((SCHEMAS / "command_reply.schema.json").read_text())).validate(body)
    bad = r.handle("segedge/cam-01/paused/set", b"ON", response_topic="segedge/cam-01/status")
    assert bad.count == "rate_limited" and bad.outgoing == ()  # never a foreign topic
    assert r.handle("segedge/cam-01/paused/set", b"ON").outgoing == ()


def test_state_messages_on_connect_match_schema():
    r = router(cams=("cam-a", "cam-b"), agent="host1")
    msgs = r.all_state_messages()
    assert len(msgs) == 2 * (len(c.SETTINGS) + 1) and all(m.retain for m in msgs)
    validator = jsonschema.Draft202012Validator(
        json.loads((SCHEMAS / "settings.schema.json").read_text()))
    for m in msgs:
        if m.topic.endswith("/settings"):
            validator.validate(json.loads(m.payload))


# ---- on a real broker: the router behind paho, as the agent will wire it

class Responder:
    """What the agent's MQTT client will do: route every message, publish the result."""

    def __init__(self, broker, r: CommandRouter) -> None:
        self.router = r
        self.logs: list = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="responder",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self.on_message
        self.ready = threading.Event()
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        for m in r.all_state_messages():
            self.publish(m)
        self.client.subscribe([(t, 1) for t in r.subscriptions()])
        assert self.ready.wait(10)

    def publish(self, o: Outgoing) -> None:
        props = None
        if o.correlation_data is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = o.correlation_data
        self.client.publish(o.topic, o.payload, qos=o.qos, retain=o.retain, properties=props)

    def on_message(self, _c, _u, msg) -> None:
        props = getattr(msg, "properties", None)
        h = self.router.handle(msg.topic, msg.payload, retained=bool(msg.retain),
                               response_topic=getattr(props, "ResponseTopic", None),
                               correlation_data=getattr(props, "CorrelationData", None),
                               ts=time.time())
        if h.log:
            self.logs.append(h.log)
        if h.action is not None:
            h = self.router.finish(h.action, None if h.action.feature == "snapshot"
                                   else "bundle refused: test")
        for o in h.outgoing:
            self.publish(o)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def listener(broker, name, topic, protocol):
    got: queue.Queue = queue.Queue()
    cl = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=protocol)
    ready = threading.Event()
    cl.on_subscribe = lambda *a: ready.set()
    cl.on_message = lambda _c, _u, m: got.put(m)
    cl.connect(broker.host, broker.port)
    cl.loop_start()
    cl.subscribe(topic, qos=1)
    assert ready.wait(10)
    return cl, got


def test_request_response_and_state_on_mosquitto(broker, unique_id):
    # a retained command left on the broker: replayed (flagged retained) at subscribe
    stale = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique_id + "stale")
    stale.connect(broker.host, broker.port)
    stale.loop_start()
    stale.publish(f"{unique_id}/cam-01/mask_encoding/set", b"rle", qos=1, retain=True
                  ).wait_for_publish(10)
    responder = Responder(broker, CommandRouter(unique_id, "cam-01",
                                                {"cam-01": CommandState()}))
    try:
        v5, replies = listener(broker, unique_id + "v5", f"{unique_id}/cam-01/reply/#",
                               mqtt.MQTTv5)
        v3, states = listener(broker, unique_id + "v3", f"{unique_id}/cam-01/+/state",
                              mqtt.MQTTv311)
        initial = {}
        while len(initial) < len(c.SETTINGS):  # the retained states arrive on subscribe
            m = states.get(timeout=10)
            initial[m.topic] = m.payload
        assert initial[f"{unique_id}/cam-01/paused/state"] == b"OFF"

        def ask(feature, payload, corr):
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = f"{unique_id}/cam-01/reply/{corr}"
            props.CorrelationData = corr.encode()
            v5.publish(f"{unique_id}/cam-01/{feature}/set", payload, qos=1, properties=props)
            m = replies.get(timeout=10)
            assert m.properties.CorrelationData == corr.encode()
            return json.loads(m.payload)

        assert ask("max_publish_fps", b"2", "a1")["result"] == "accepted"
        refused = ask("max_publish_fps", b"900", "a2")
        assert refused["result"] == "refused" and "out of range" in refused["reason"]
        assert ask("snapshot", b"PRESS", "a3")["result"] == "accepted"
        reload = ask("reload", b"", "a4")
        assert reload["result"] == "refused" and reload["reason"] == "reload: bundle refused: test"
        # 3.1.1: the state topic answers (the refusal republished the unchanged 2.0)
        v3.publish(f"{unique_id}/cam-01/paused/set", b"ON", qos=1)
        seen = []
        while (f"{unique_id}/cam-01/paused/state", b"ON") not in seen:
            m = states.get(timeout=10)
            seen.append((m.topic, m.payload))
        assert (f"{unique_id}/cam-01/max_publish_fps/state", b"2.0") in seen
        # the stale retained command changed nothing (it came before all of the above)
        assert responder.router.state("cam-01").mask_encoding == "png"
        assert any("retained commands are ignored" in line for line in responder.logs)
        stale.publish(f"{unique_id}/cam-01/mask_encoding/set", b"", qos=1, retain=True
                      ).wait_for_publish(10)  # clear it
        for cl in (v5, v3, stale):
            cl.loop_stop()
            cl.disconnect()
    finally:
        responder.stop()
