"""The sites story against booted brokers, run inside the rig's controller namespace.

    python -m tests.rig.sites_story --pki PKI --central IP --site-a IP --site-b IP \\
        --netns-a NETNS [--outage 20]

Two site brokers (site-a with device dev-a1, site-b with dev-b1) bridged to a central
broker, all provisioned by deploy/site.yml. Devices are MQTT 5 clients with their kit
certificates (tests/rig/test_sites_local.py's Device: publishes what an agent publishes,
answers a command on its reply tree). Site A's uplink is cut by a blackhole route to the
central broker in site A's network namespace. Prints one JSON object of what was seen.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from typing import Dict, List

from tests.rig.mqtt_probe import Identity, Probe
from tests.rig.test_sites_local import Device
from tests.rig.test_sites_local import _wait as wait

PORT = 8883


class _Broker:
    """What test_sites_local.Device needs of a broker: a port and identity files."""

    def __init__(self, host: str, pki: str):
        self.host, self.port, self.pki = host, PORT, pki

    def identity_files(self, name: str) -> Dict[str, str]:
        return {"ca": f"{self.pki}/ca.crt", "cert": f"{self.pki}/clients/{name}.crt",
                "key": f"{self.pki}/clients/{name}.key"}


def probe(broker: _Broker, name: str, client_id: str = "") -> Probe:
    p = Probe(Identity(broker.host, broker.port, client_id=client_id or name,
                       **broker.identity_files(name)))
    assert p.connect() == 0, (name, p.report())
    return p


def device(broker: _Broker, name: str) -> Device:
    dev = Device.__new__(Device)
    dev.name, dev.commands = name, []
    dev.probe = probe(broker, name)
    dev.probe.client.on_message = dev._on_message
    dev.probe.subscribe(f"segedge/{name}/+/set")
    return dev


def main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pki", required=True)
    ap.add_argument("--central", required=True)
    ap.add_argument("--site-a", required=True)
    ap.add_argument("--site-b", required=True)
    ap.add_argument("--netns-a", required=True)
    ap.add_argument("--outage", type=float, default=20.0)
    args = ap.parse_args(argv)
    central, site_a, site_b = (_Broker(h, args.pki) for h in (args.central, args.site_a,
                                                              args.site_b))
    out: Dict[str, object] = {}
    dash = probe(central, "dash")
    dash.subscribe("segedge/#")
    a, b = device(site_a, "dev-a1"), device(site_b, "dev-b1")
    for dev in (a, b):
        dev.publish("status", {"state": "online"}, retain=True)
        dev.publish("stats", {"seq": 0})
        dev.publish("mask", {"seq": 0}, qos=0)
    want = {f"segedge/{d}/{leaf}" for d in ("dev-a1", "dev-b1")
            for leaf in ("status", "stats", "mask")}
    wait(lambda: want <= {m.topic for m in list(dash.messages)}, 20)
    out["arrived_at_centre"] = sorted(want & {m.topic for m in list(dash.messages)})
    op = probe(central, "op")
    op.request("segedge/dev-a1/restart/set", b"{}", "segedge/dev-a1/reply/op-1",
               b"\x01\x02", seconds=15)
    out["reply"] = op.replies()
    out["commands_a"] = [m.topic for m in a.commands]
    out["commands_b"] = [m.topic for m in b.commands]
    # cross-site: dev-a1 through its own broker, site B's and the centre
    spies = {"site-a": probe(site_a, "dev-a1", "dev-a1-spy"),
             "site-b": probe(site_b, "dev-a1", "dev-a1-spy"),
             "central": probe(central, "dev-a1", "dev-a1-spy")}
    out["cross_publish"] = {where: p.publish("segedge/dev-b1/status", b"{}")
                            for where, p in spies.items()}
    for p in spies.values():
        p.subscribe("segedge/#")
    b.publish("stats", {"seq": 1})
    time.sleep(2)
    out["cross_read"] = {where: [m.topic for m in list(p.messages) if "dev-b1" in m.topic]
                         for where, p in spies.items()}
    for p in spies.values():
        p.close()
    # the outage: site A's uplink cut, stats every 0.5 s at both sites
    sent: Dict[str, List[int]] = {"dev-a1": [], "dev-b1": []}
    stop = threading.Event()

    def run():
        seq = 100
        while not stop.is_set():
            seq += 1
            for dev in (a, b):
                dev.publish("stats", {"seq": seq})
                sent[dev.name].append(seq)
            time.sleep(0.5)
    pub = threading.Thread(target=run, daemon=True)
    pub.start()
    time.sleep(2)
    route = ["ip", "-n", args.netns_a, "route", "add", "blackhole", f"{args.central}/32"]
    subprocess.run(route, check=True)
    t_cut = time.time()
    time.sleep(args.outage)
    route[4] = "del"
    subprocess.run(route, check=True)
    t_restore = time.time()

    def got(dev):
        return sorted({json.loads(m.payload)["seq"] for m in list(dash.messages)
                       if m.topic == f"segedge/{dev}/stats"} - {0, 1})
    wait(lambda: got("dev-a1")[-1:] == sent["dev-a1"][-1:], 60)
    stop.set()
    pub.join(5)
    wait(lambda: all(got(d) == sent[d] for d in sent), 30)
    out["outage_s"] = round(t_restore - t_cut, 1)
    out["stats_sent"] = {d: len(v) for d, v in sent.items()}
    out["stats_delivered"] = {d: len(set(got(d)) & set(v)) for d, v in sent.items()}
    for c in (dash, op, a, b):
        c.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
