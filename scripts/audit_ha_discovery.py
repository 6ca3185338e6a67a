"""Flag Home Assistant discovery configs that point outside the publishing device's own ids.

The segedge_broker role's ACL lets a device write discovery only under its own node ids
(``<ha>/+/segedge_<id>/#``, ``segedge_agent_<id>``, ``segedge_<camera>``), but Mosquitto
cannot look into a payload: a device can publish, under its own node, a config whose
``command_topic`` names another device's command topic and whose ``device.identifiers``
name another device, so the entity appears inside that device in Home Assistant and an
operator's click commands it (issue 17, finding 8). The agent never writes such a config;
a device that does was taken over (or runs something else). This tool is the check an
operator runs (after a deploy, from cron): it reads every retained config under the
discovery prefix as a subscriber or operator account, and the broker's ACL (the role's
``<segedge_broker_config_dir>/acl``: who owns which node and which ids), and lists every
config whose topics, device identifiers, connections or unique id are not its owner's.

    python scripts/audit_ha_discovery.py --acl /etc/mosquitto/segedge/acl \\
        --host broker.example --port 8883 --ca pki/ca.crt \\
        (--cert pki/clients/dash.crt --key pki/clients/dash.key | --user dash --password-file F)
    python scripts/audit_ha_discovery.py --acl acl --retained dump.json   # {topic: payload}

Abbreviated keys (``cmd_t``, ``dev``/``ids``) and the ``~`` base topic are expanded the way
Home Assistant does. Exit 0: nothing flagged; 1: findings, one line each, with the
``mosquitto_pub`` line (an admin on the broker host) that deletes the config; 2: the broker
or the ACL could not be read. Only the standard library and paho-mqtt.
"""

from __future__ import annotations

import argparse
import json
import re
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Set, Tuple

_SLUG = re.compile(r"[^a-zA-Z0-9_-]")  # edge_agent.control.homeassistant.slug


def slug(text: str) -> str:
    return _SLUG.sub("_", text)


@dataclass
class Owner:
    """One broker identity that may write discovery: the ids and nodes the ACL gives it."""

    user: str
    ids: Set[str] = field(default_factory=set)
    nodes: Set[str] = field(default_factory=set)

    def identifiers(self) -> Set[str]:
        """The HA device identifiers the agent gives its cameras and itself."""
        return {f"segedge_{slug(x)}" for x in self.ids} | \
            {f"segedge_agent_{slug(x)}" for x in self.ids}


@dataclass(frozen=True)
class Finding:
    topic: str
    owner: str
    what: str

    def line(self) -> str:
        return f"{self.topic} (written by {self.owner or 'nobody the ACL knows'}): {self.what}"


def owners_from_acl(text: str, prefix: str, discovery_prefix: str) -> Dict[str, Owner]:
    """``user`` blocks of a Mosquitto ACL file -> node id -> its owner. A user's ids are the
    ``<prefix>/<x>`` it may write a status under (or all of ``<prefix>/<x>/#``, the ACL
    before issue 17); its nodes are the ``<ha>/+/<node>/#`` it may write."""
    users: Dict[str, Owner] = {}
    current: Optional[Owner] = None
    id_re = re.compile(rf"^{re.escape(prefix)}/([^/+#]+)/(?:status|#)$")
    node_re = re.compile(rf"^{re.escape(discovery_prefix)}/\+/([^/+#]+)/#$")
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("user "):
            current = users.setdefault(line[5:].strip(), Owner(line[5:].strip()))
            continue
        parts = line.split()
        if current is None or len(parts) != 3 or parts[0] != "topic" or parts[1] not in (
                "write", "readwrite"):
            continue
        if id_re.match(parts[2]):
            current.ids.add(id_re.match(parts[2]).group(1))
        elif node_re.match(parts[2]):
            current.nodes.add(node_re.match(parts[2]).group(1))
    by_node: Dict[str, Owner] = {}
    for owner in users.values():
        for node in owner.nodes:
            by_node[node] = owner
    return by_node


def _topic_keys(config: Mapping[str, Any], base: str) -> Iterator[Tuple[str, Any]]:
    """(key path, topic) of every topic in a config: keys ending in ``topic`` or ``_t``
    (HA's abbreviations), ``t`` and ``topic`` inside ``availability``/``avty``; ``~`` at
    either end replaced by the base topic as Home Assistant does."""
    def expand(value: Any) -> Any:
        if isinstance(value, str) and base:
            if value.startswith("~"):
                return base + value[1:]
            if value.endswith("~"):
                return value[:-1] + base
        return value

    for key, value in config.items():
        if key in ("availability", "avty") and isinstance(value, list):
            for i, entry in enumerate(value):
                if isinstance(entry, Mapping):
                    for k, v in entry.items():
                        if k in ("topic", "t"):
                            yield f"{key}[{i}].{k}", expand(v)
        elif key.endswith("topic") or key.endswith("_t"):
            yield key, expand(value)


def audit_config(topic: str, payload: str, by_node: Mapping[str, Owner], prefix: str,
                 discovery_prefix: str) -> List[Finding]:
    """What is wrong with one retained discovery config (nothing for a removal)."""
    levels = topic.split("/")
    head = discovery_prefix.split("/")
    if levels[:len(head)] != head or levels[-1] != "config" or not payload:
        return []
    rest = levels[len(head):]
    node = rest[1] if len(rest) == 4 else ""  # <component>/<node>/<object>/config
    owner = by_node.get(node)
    if owner is None:
        if node.startswith("segedge") or (node == "" and f'"{prefix}/' in payload):
            return [Finding(topic, "", "no device may write this node: written by someone "
                                       "else (an admin, an old fleet) or the ACL is not this "
                                       "broker's")]
        return []  # not a segedge node: not this tool's
    out: List[Finding] = []
    try:
        config = json.loads(payload)
    except ValueError:
        return [Finding(topic, owner.user, "payload is not JSON")]
    if not isinstance(config, dict):
        return [Finding(topic, owner.user, "payload is not a JSON object")]
    base = config.get("~", "")
    for key, value in _topic_keys(config, base if isinstance(base, str) else ""):
        parts = value.split("/") if isinstance(value, str) else []
        if len(parts) < 3 or parts[0] != prefix or parts[1] not in owner.ids:
            out.append(Finding(topic, owner.user, f"{key} {json.dumps(value)} is not under "
                                                  f"{prefix}/<one of {sorted(owner.ids)}>/"))
    device = config.get("device", config.get("dev"))
    if isinstance(device, Mapping):
        allowed = owner.identifiers()
        ids = device.get("identifiers", device.get("ids", []))
        for ident in [ids] if isinstance(ids, str) else list(ids or []):
            if ident not in allowed:
                out.append(Finding(topic, owner.user, f"device identifier {json.dumps(ident)}"
                                                      " is not one of its own"))
        via = device.get("via_device", device.get("via_dev"))
        if via is not None and via not in allowed:
            out.append(Finding(topic, owner.user, f"via_device {json.dumps(via)} is not one "
                                                  "of its own"))
        if device.get("connections", device.get("cns")):
            out.append(Finding(topic, owner.user, "device connections (they merge the entity "
                                                  "into whichever device has them)"))
    elif device is not None:
        out.append(Finding(topic, owner.user, "device is not an object"))
    unique = config.get("unique_id", config.get("uniq_id"))
    if unique is not None and not str(unique).startswith(f"{node}_"):
        out.append(Finding(topic, owner.user, f"unique_id {json.dumps(unique)} does not start "
                                              f"with its node id {node}_"))
    return out


def audit(retained: Mapping[str, str], acl_text: str, prefix: str = "segedge",
          discovery_prefix: str = "homeassistant") -> List[Finding]:
    by_node = owners_from_acl(acl_text, prefix, discovery_prefix)
    out: List[Finding] = []
    for topic in sorted(retained):
        out += audit_config(topic, retained[topic], by_node, prefix, discovery_prefix)
    return out


def read_retained(args: argparse.Namespace) -> Dict[str, str]:
    """Every retained message under ``<discovery prefix>/#`` (waits ``--seconds``)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    found: Dict[str, str] = {}
    lock, subscribed, failed = threading.Lock(), threading.Event(), []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id,
                         protocol=mqtt.MQTTv311)
    if args.user:
        password = Path(args.password_file).read_text().strip() if args.password_file else None
        client.username_pw_set(args.user, password)
    if args.ca:
        client.tls_set(ca_certs=args.ca, certfile=args.cert or None, keyfile=args.key or None,
                       cert_reqs=ssl.CERT_REQUIRED)

    def on_connect(c, userdata, flags, reason, props):
        if reason.is_failure:
            failed.append(str(reason))
            subscribed.set()
        else:
            c.subscribe(f"{args.discovery_prefix}/#", qos=1)

    def on_message(c, userdata, msg):
        if msg.retain:
            with lock:
                found[msg.topic] = msg.payload.decode("utf-8", "replace")

    client.on_connect = on_connect
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = on_message
    client.connect(args.host, args.port, keepalive=30)
    client.loop_start()
    try:
        if not subscribed.wait(15) or failed:
            raise ConnectionError(f"no subscription on {args.host}:{args.port}: "
                                  f"{failed[0] if failed else 'timed out'}")
        time.sleep(args.seconds)
    finally:
        client.disconnect()
        client.loop_stop()
    with lock:
        return dict(found)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--acl", required=True, help="the broker's ACL file (the role's)")
    parser.add_argument("--prefix", default="segedge")
    parser.add_argument("--discovery-prefix", default="homeassistant")
    parser.add_argument("--retained", help="JSON {topic: payload} instead of a broker")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8883)
    parser.add_argument("--ca", default="")
    parser.add_argument("--cert", default="")
    parser.add_argument("--key", default="")
    parser.add_argument("--user", default="")
    parser.add_argument("--password-file", default="")
    parser.add_argument("--client-id", default="", help="(the broker binds it to the user)")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="how long to collect retained configs after subscribing")
    args = parser.parse_args(argv)
    try:
        acl_text = Path(args.acl).read_text()
        if args.retained:
            retained = json.loads(Path(args.retained).read_text())
        else:
            retained = read_retained(args)
    except (OSError, ValueError, ConnectionError, ssl.SSLError) as exc:
        print(f"audit_ha_discovery: {exc}", file=sys.stderr)
        return 2
    findings = audit(retained, acl_text, args.prefix, args.discovery_prefix)
    configs = sum(1 for p in retained.values() if p)
    for finding in findings:
        print(f"FLAGGED {finding.line()}")
    for topic in sorted({f.topic for f in findings}):
        print(f"  delete: mosquitto_pub -r -n -t '{topic}'  (an admin identity on the broker)")
    print(f"{configs} discovery configs read, {len(findings)} findings in "
          f"{len({f.topic for f in findings})} configs")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
