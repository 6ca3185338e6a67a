"""Sites, bridged (issue 22): two site brokers bridged to a central broker, on this machine.

Three Mosquittos run with exactly what the segedge_broker role writes (its templates, its
filter plugin's site plan, its PKI helper; tests/rig/broker_config.py), one kit CA. Each
site broker reaches the central one through its own WAN link (tests/rig/wan.py), which
the outage test cuts. Devices are MQTT 5 clients with their own certificates, publishing
what an agent publishes (status retained, stats at QoS 1, masks at QoS 0, the agent's
default) and answering commands under their reply tree, as the agent does.

The outage lasts SEGEDGE_SITE_OUTAGE_S seconds (default 20; the 60 s figure in
docs/deploy.md was measured with SEGEDGE_SITE_OUTAGE_S=60 and
SEGEDGE_SITE_OUTAGE_JSON=docs/benchmarks/site-outage-60s.json).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from typing import Dict, List

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.conftest import require
from tests.rig.broker_config import LocalBroker, free_port, site_plan
from tests.rig.mqtt_probe import Identity, Probe
from tests.rig.wan import Wan

NOT_AUTHORISED = 135
OUTAGE_S = float(os.environ.get("SEGEDGE_SITE_OUTAGE_S", "20"))
KEEPALIVE_S = 5
# device host -> (site, cameras)
FLEET = {"dev-a1": ("site-a", ["a-yard"]), "dev-b1": ("site-b", [])}
BROKERS = [{"host": "central", "site": "", "central": ""},
           {"host": "broker-a", "site": "site-a", "central": ""},
           {"host": "broker-b", "site": "site-b", "central": ""}]
SUBSCRIBERS, OPERATORS = ["dash"], ["op"]


class Sites:
    def __init__(self, work):
        fleet = [{"host": h, "id": h, "cameras": cams, "senders": []}
                 for h, (_site, cams) in FLEET.items()]
        site_of = {h: site for h, (site, _c) in FLEET.items()}
        plans = {b["host"]: site_plan(fleet, site_of, BROKERS, b["host"]) for b in BROKERS}
        assert all(not p["errors"] for p in plans.values()), plans
        pki = work / "pki"
        central = plans["central"]
        self.central = LocalBroker(work / "central", free_port(), "certificate",
                                   [d["id"] for d in central["served"]], SUBSCRIBERS,
                                   OPERATORS, bridges=central["bridges"], pki_dir=pki,
                                   name="central").start()
        self.wan: Dict[str, Wan] = {}
        self.site: Dict[str, LocalBroker] = {}
        for host in ("broker-a", "broker-b"):
            plan = plans[host]
            wan = Wan(self.central.port).start()
            uplink = dict(plan["uplink"], address=f"127.0.0.1:{wan.port}")
            broker = LocalBroker(
                work / host, free_port(), "certificate", [d["id"] for d in plan["served"]],
                [], [], cameras={d["id"]: d["cameras"] for d in plan["served"]},
                uplink=uplink, pki_dir=pki, name=host,
                overrides={"segedge_broker_bridge_keepalive": KEEPALIVE_S,
                           "segedge_broker_bridge_restart_timeout": 1}).start()
            self.wan[plan["uplink"]["site"]] = wan
            self.site[plan["uplink"]["site"]] = broker
        self.plans = plans

    def connections(self, site: str) -> int:
        """How many times the central broker accepted site's bridge so far (its log)."""
        return sum(1 for line in self.central.log.read_text().splitlines()
                   if "New client connected" in line and f" as bridge-{site} (" in line)

    def bridge_up(self, site: str, after: int = 0, timeout: float = 30.0) -> bool:
        """Site's bridge connected more than ``after`` times (reconnected after a cut)."""
        return _wait(lambda: self.connections(site) > after, timeout)

    def stop(self):
        for b in self.site.values():
            b.stop()
        for w in self.wan.values():
            w.stop()
        self.central.stop()


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    require(shutil.which("mosquitto") is not None, "mosquitto (apt-get install mosquitto)")
    s = Sites(tmp_path_factory.mktemp("sites"))
    try:
        assert s.bridge_up("site-a") and s.bridge_up("site-b"), s.central.log.read_text()[-3000:]
        yield s
    finally:
        s.stop()


def _probe(broker: LocalBroker, name: str, client_id: str = "") -> Probe:
    probe = Probe(Identity("127.0.0.1", broker.port, client_id=client_id or name,
                           **broker.identity_files(name)))
    assert probe.connect() == 0, (name, probe.report(), broker.log.read_text()[-2000:])
    return probe


class Device:
    """What an agent does on the wire: publishes under its ids, answers its commands with an
    MQTT 5 reply on the command's response topic (only under <prefix>/<id>/reply/)."""

    def __init__(self, broker: LocalBroker, name: str):
        self.name = name
        self.commands: List[mqtt.MQTTMessage] = []
        self.probe = _probe(broker, name)
        self.probe.client.on_message = self._on_message
        assert self.probe.subscribe(f"segedge/{name}/+/set") == [1]

    def _on_message(self, client, userdata, msg):
        self.commands.append(msg)
        props = msg.properties
        topic = getattr(props, "ResponseTopic", None)
        if topic and topic.startswith(f"segedge/{self.name}/reply/"):
            reply = Properties(PacketTypes.PUBLISH)
            reply.CorrelationData = props.CorrelationData
            client.publish(topic, json.dumps({"ok": True, "device": self.name,
                                              "command": msg.topic}), qos=1, properties=reply)

    def publish(self, leaf: str, payload: dict, qos: int = 1, retain: bool = False):
        return self.probe.client.publish(f"segedge/{self.name}/{leaf}", json.dumps(payload),
                                         qos=qos, retain=retain)

    def close(self):
        self.probe.close()


def _topics(probe: Probe) -> List[str]:
    return [m.topic for m in list(probe.messages)]


def _wait(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def test_masks_statuses_and_stats_of_both_sites_arrive_at_the_centre(sites):
    dash = _probe(sites.central, "dash")
    assert dash.subscribe("segedge/#") == [1]
    a, b = Device(sites.site["site-a"], "dev-a1"), Device(sites.site["site-b"], "dev-b1")
    for dev in (a, b):
        dev.publish("status", {"state": "online"}, retain=True)
        dev.publish("stats", {"seq": 1})
        dev.publish("mask", {"seq": 1}, qos=0)
    a.probe.client.publish("segedge/a-yard/mask", b"{}", qos=0)  # a camera of dev-a1
    want = {f"segedge/{d}/{leaf}" for d in ("dev-a1", "dev-b1")
            for leaf in ("status", "stats", "mask")} | {"segedge/a-yard/mask"}
    assert _wait(lambda: want <= set(_topics(dash)), 10), (sorted(set(_topics(dash))),
                                                           sites.central.log.read_text()[-2000:])
    # the retained status is kept at the centre too: a late dashboard gets it at once
    late = _probe(sites.central, "op")
    late.subscribe("segedge/+/status", seconds=1.0)
    assert {"segedge/dev-a1/status", "segedge/dev-b1/status"} <= set(_topics(late))
    for c in (dash, late, a, b):
        c.close()


def test_a_command_from_the_centre_reaches_the_right_device_and_its_reply_comes_back(sites):
    a, b = Device(sites.site["site-a"], "dev-a1"), Device(sites.site["site-b"], "dev-b1")
    op = _probe(sites.central, "op")
    out = op.request("segedge/dev-a1/restart/set", b'{"reason":"test"}',
                     "segedge/dev-a1/reply/op-1", bytes.fromhex("c0ffee"), seconds=10)
    assert out == {"suback": [1], "puback": 0}, (out, sites.central.log.read_text()[-2000:])
    replies = op.replies()
    assert replies and replies[0]["topic"] == "segedge/dev-a1/reply/op-1", replies
    assert replies[0]["correlation"] == "c0ffee"  # MQTT 5 properties cross both bridges
    assert replies[0]["payload"]["command"] == "segedge/dev-a1/restart/set"
    assert [m.topic for m in a.commands] == ["segedge/dev-a1/restart/set"]
    time.sleep(1.0)
    assert b.commands == [], "a command for site A reached site B"
    for c in (op, a, b):
        c.close()


def test_a_site_outage_queues_status_and_stats_and_the_other_site_is_unaffected(sites):
    """Site A's uplink is cut for OUTAGE_S: its QoS 1 status and stats are queued at the
    site and delivered on reconnect, its masks (QoS 0) are dropped while the link is down
    (the documented policy); site B loses nothing. A command sent to site A during the
    outage is not delivered later: Mosquitto 2.0's MQTT 5 bridge sends no session expiry,
    so the central broker ends the bridge's session when the link drops (eclipse-mosquitto
    issues 2793, 2980; docs/deploy.md): the operator gets no reply and sends it again."""
    dash = _probe(sites.central, "dash")
    dash.subscribe("segedge/#")
    a, b = Device(sites.site["site-a"], "dev-a1"), Device(sites.site["site-b"], "dev-b1")
    op = _probe(sites.central, "op")
    sent: Dict[str, Dict[str, List[int]]] = {d: {"stats": [], "mask": []}
                                            for d in ("dev-a1", "dev-b1")}
    stop = threading.Event()
    phase = {"cut_at": None, "restored_at": None}

    def run():
        seq = 0
        while not stop.is_set():
            seq += 1
            for dev in (a, b):
                dev.publish("mask", {"seq": seq, "t": time.time()}, qos=0)
                sent[dev.name]["mask"].append((seq, time.time()))
                if seq % 5 == 0:  # stats every 0.5 s (the agent: every 5 s)
                    dev.publish("stats", {"seq": seq})
                    sent[dev.name]["stats"].append((seq, time.time()))
            time.sleep(0.1)
    pub = threading.Thread(target=run, daemon=True)
    pub.start()
    time.sleep(3)
    before = sites.connections("site-a")
    sites.wan["site-a"].cut()
    phase["cut_at"] = time.time()
    time.sleep(1)
    a.publish("status", {"state": "degraded", "reason": "during the outage"}, retain=True)
    op.publish("segedge/dev-a1/outage/set", b"{}")  # queued at the centre for bridge-site-a
    time.sleep(OUTAGE_S - 1)
    sites.wan["site-a"].restore()
    phase["restored_at"] = time.time()
    assert sites.bridge_up("site-a", before, 30), sites.central.log.read_text()[-3000:]
    phase["reconnected_at"] = time.time()
    phase["reconnected_after_s"] = round(time.time() - phase["restored_at"], 1)
    time.sleep(3)
    stop.set()
    pub.join(5)
    time.sleep(3)

    def got(dev: str, leaf: str) -> List[int]:
        return [json.loads(m.payload)["seq"] for m in list(dash.messages)
                if m.topic == f"segedge/{dev}/{leaf}"]
    for dev in ("dev-a1", "dev-b1"):
        stats = got(dev, "stats")
        assert sorted(set(stats)) == [s for s, _t in sent[dev]["stats"]], (dev, stats)
    assert "segedge/dev-a1/status" in _topics(dash)
    assert a.commands == [], [m.topic for m in a.commands]  # not queued (see above)
    out = op.request("segedge/dev-a1/again/set", b"{}", "segedge/dev-a1/reply/op-2",
                     b"\x02", seconds=10)
    assert out["puback"] == 0 and [r["topic"] for r in op.replies()] == [
        "segedge/dev-a1/reply/op-2"], (out, op.replies())
    # site B: every mask of the whole run (QoS 0 over a link that stayed up)
    masks_b = got("dev-b1", "mask")
    assert len(set(masks_b)) >= 0.99 * len(sent["dev-b1"]["mask"]), (len(masks_b),)
    # site A: masks (QoS 0) are not queued for the outage: most of those published while
    # the link was down never arrive (Mosquitto keeps QoS 0 for a bridge only while it is
    # reconnecting: the last seconds before it is back may still come late); masks after
    # the bridge came back arrive
    masks_a = set(got("dev-a1", "mask"))
    during = [s for s, t in sent["dev-a1"]["mask"]
              if phase["cut_at"] + 0.5 < t < phase["restored_at"]]
    late = masks_a & set(during)
    after = [s for s, t in sent["dev-a1"]["mask"] if t > phase["reconnected_at"] + 1]
    assert during and len(late) <= 0.5 * len(during), (len(late), len(during))
    assert after and set(after) <= masks_a, len(set(after) - masks_a)
    report = {"outage_s": round(phase["restored_at"] - phase["cut_at"], 1),
              "site_a_stats_sent": len(sent["dev-a1"]["stats"]),
              "site_a_stats_delivered": len(set(got("dev-a1", "stats"))),
              "bridge_reconnected_after_restore_s": phase["reconnected_after_s"],
              "site_a_masks_during_outage": len(during),
              "site_a_masks_of_those_delivered": len(late),
              "site_b_stats_sent": len(sent["dev-b1"]["stats"]),
              "site_b_stats_delivered": len(set(got("dev-b1", "stats"))),
              "site_b_masks_sent": len(sent["dev-b1"]["mask"]),
              "site_b_masks_delivered": len(set(masks_b))}
    print("SITE-OUTAGE", json.dumps(report))
    if os.environ.get("SEGEDGE_SITE_OUTAGE_JSON"):  # the figure docs/deploy.md quotes
        with open(os.environ["SEGEDGE_SITE_OUTAGE_JSON"], "w", encoding="utf-8") as handle:
            json.dump(dict(report, command=f"SEGEDGE_SITE_OUTAGE_S={OUTAGE_S:g} .venv/bin/python "
                           "-m pytest -q -s tests/rig/test_sites_local.py -k outage"),
                      handle, indent=1)
    for c in (dash, op, a, b):
        c.close()


def test_a_device_of_one_site_cannot_publish_as_or_read_another_sites_device(sites):
    a_at_a = _probe(sites.site["site-a"], "dev-a1", client_id="dev-a1-spy")
    spy_sub = a_at_a.subscribe("segedge/#")
    # through its own site broker: refused at the site, so nothing reaches the bridge
    assert a_at_a.publish("segedge/dev-b1/status", b'{"state":"offline"}', retain=True) == \
        NOT_AUTHORISED
    assert a_at_a.publish("segedge/dev-b1/reply/x", b"{}") == NOT_AUTHORISED
    # through the other site's broker and the central one (same CA, so TLS accepts the
    # certificate): listed in neither ACL, it may write and read nothing there
    a_at_b = _probe(sites.site["site-b"], "dev-a1", client_id="dev-a1-b")
    a_at_c = _probe(sites.central, "dev-a1", client_id="dev-a1-c")
    for probe in (a_at_b, a_at_c):
        assert probe.publish("segedge/dev-b1/status", b"{}") == NOT_AUTHORISED
        assert probe.publish("segedge/dev-a1/status", b"{}") == NOT_AUTHORISED
        probe.subscribe("segedge/#")
    dash = _probe(sites.central, "dash")
    dash.subscribe("segedge/#")
    b = Device(sites.site["site-b"], "dev-b1")
    op = _probe(sites.central, "op")
    b.publish("stats", {"seq": 99})
    b.publish("mask", {"seq": 99}, qos=0)
    op.publish("segedge/dev-b1/restart/set", b"{}")
    assert _wait(lambda: "segedge/dev-b1/stats" in _topics(dash), 10)
    assert _wait(lambda: [m.topic for m in b.commands] == ["segedge/dev-b1/restart/set"], 10)
    time.sleep(1.0)
    assert spy_sub == [1]  # Mosquitto grants the SUBACK, then checks every delivery
    for probe in (a_at_a, a_at_b, a_at_c):
        leaked = [t for t in _topics(probe) if "dev-b1" in t]
        assert leaked == [], leaked
    assert "segedge/dev-b1/status" not in [m.topic for m in dash.messages
                                           if m.payload == b'{"state":"offline"}']
    for c in (a_at_a, a_at_b, a_at_c, dash, op, b):
        c.close()


def test_a_site_bridge_at_the_centre_carries_only_its_own_sites_topics(sites):
    """The central ACL, seen by a client holding site A's bridge identity (a site broker
    taken over): site A's device topics only, never site B's, and no commands upward."""
    # The real bridge-site-a is connected under that client id: this probe takes its
    # place for a moment (client ids are bound to user names), the bridge reconnects after.
    before = sites.connections("site-a")
    spy = _probe(sites.central, "bridge-site-a")
    assert spy.publish("segedge/dev-a1/stats", b'{"seq":0}') < 128  # 16: no subscriber
    assert spy.publish("segedge/a-yard/status", b"{}") < 128
    for topic in ("segedge/dev-b1/status", "segedge/dev-b1/stats", "segedge/dev-b1/reply/x",
                  "segedge/dev-a1/restart/set", "segedge/dev-b1/restart/set",
                  "segedge/dash/status"):
        assert spy.publish(topic, b"{}") == NOT_AUTHORISED, topic
    spy.subscribe("segedge/#")
    op = _probe(sites.central, "op")
    op.publish("segedge/dev-b1/restart/set", b"{}")
    op.publish("segedge/dev-a1/restart/set", b"{}")
    assert _wait(lambda: "segedge/dev-a1/restart/set" in _topics(spy), 10)
    time.sleep(0.5)
    assert [t for t in _topics(spy) if "dev-b1" in t] == []
    spy.close()
    op.close()
    assert sites.bridge_up("site-a", before, 30)  # the real bridge is back


def test_a_bridge_in_password_mode(tmp_path):
    """segedge_broker_auth: password: the bridge logs in as bridge-<site> with its password
    (remote_username/remote_password; the role writes mosquitto.conf 0640 then); a wrong
    one is refused by the central broker and nothing crosses."""
    require(shutil.which("mosquitto") is not None, "mosquitto (apt-get install mosquitto)")
    fleet = [{"host": "dev-a1", "id": "dev-a1", "cameras": [], "senders": []}]
    brokers = BROKERS[:2]
    plan_c = site_plan(fleet, {"dev-a1": "site-a"}, brokers, "central")
    plan_a = site_plan(fleet, {"dev-a1": "site-a"}, brokers, "broker-a")
    pki = tmp_path / "pki"
    passwords = {"dash": "pw-dash-1", "dev-a1": "pw-dev-a1", "bridge-site-a": "pw-bridge-a"}
    central = LocalBroker(tmp_path / "central", free_port(), "password", [], ["dash"], [],
                          passwords=dict(passwords), bridges=plan_c["bridges"], pki_dir=pki,
                          name="central").start()
    sites = []
    try:
        for wrong in (False, True):
            pw = dict(passwords, **({"bridge-site-a": "not-it"} if wrong else {}))
            site = LocalBroker(tmp_path / f"a-{wrong}", free_port(), "password", ["dev-a1"], [],
                               [], passwords=pw, pki_dir=pki, name="broker-a",
                               uplink=dict(plan_a["uplink"],
                                           address=f"127.0.0.1:{central.port}")).start()
            sites.append(site)
            assert "remote_username bridge-site-a" in site.conf.read_text()
            dash = Probe(Identity("127.0.0.1", central.port, client_id="dash",
                                  **central.identity_files("dash")))
            assert dash.connect() == 0
            dash.subscribe("segedge/#")
            dev = Probe(Identity("127.0.0.1", site.port, client_id="dev-a1",
                                 **site.identity_files("dev-a1")))
            assert dev.connect() == 0
            time.sleep(3)  # the bridge's first connection
            dev.publish("segedge/dev-a1/stats", b'{"seq":1}')
            arrived = _wait(lambda d=dash: "segedge/dev-a1/stats" in _topics(d), 5)
            assert arrived is (not wrong), (wrong, central.log.read_text()[-1500:])
            dev.close()
            dash.close()
            site.stop()
    finally:
        for site in sites:
            site.stop()
        central.stop()
