"""Mosquitto password-file hashes computed on the controller, reproducibly; the fleet's names.

``mosquitto_passwd`` salts at random, so a password file it writes changes on every run.
This filter writes the same ``$7$`` (PBKDF2-HMAC-SHA512) entry Mosquitto 2.x verifies,
with a salt derived from the password and the user name: the entry changes exactly when
the password does, which keeps the role idempotent and rotation visible.

The other filters list who claims each topic level, identity and Home Assistant node id
of the fleet (devices, their cameras and frames-in senders, accounts), so the preflight
can refuse a name claimed twice, and give acl.j2 the agent's own node-id slug;
``segedge_sites`` plans bridged sites: which devices a broker serves, the bridges a
central broker lists, a site broker's uplink, and what is wrong with the inventory.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Any, Dict, Iterable, List, Mapping

ITERATIONS = 1000  # Mosquitto's own default is 101; the count travels in the entry.
SALT_LEN = 12  # as mosquitto_passwd
_SLUG = re.compile(r"[^a-zA-Z0-9_-]")


def mosquitto_pbkdf2(password: str, username: str, iterations: int = ITERATIONS) -> str:
    """Return ``$7$<iterations>$<salt b64>$<hash b64>`` for a Mosquitto password file."""
    if not isinstance(password, str) or not password:
        raise ValueError(f"mosquitto_pbkdf2: empty or non-text password for user {username!r}")
    secret = password.encode("utf-8")
    salt = hmac.new(secret, b"segedge-mosquitto:" + username.encode("utf-8"),
                    hashlib.sha256).digest()[:SALT_LEN]
    digest = hashlib.pbkdf2_hmac("sha512", secret, salt, int(iterations), 64)
    return "$7${}${}${}".format(int(iterations), base64.b64encode(salt).decode("ascii"),
                                base64.b64encode(digest).decode("ascii"))


def segedge_ha_slug(text: str) -> str:
    """The agent's Home Assistant node-id slug (edge_agent.control.homeassistant.slug): every
    character outside [a-zA-Z0-9_-] becomes ``_``."""
    return _SLUG.sub("_", str(text))


def segedge_owners(fleet: Iterable[Mapping[str, Any]], subscribers: Iterable[str] = (),
                   operators: Iterable[str] = ()) -> List[Dict[str, str]]:
    """Every name that is a topic level (``<prefix>/<name>/...``) or an identity, with who
    claims it: ``[{"name": ..., "kind": "camera", "what": "a camera of host cam-01"}, ...]``
    (kind: device, camera, sender, subscriber, operator).

    ``fleet``: one ``{"host", "id", "cameras", "senders"}`` per device (tasks/preflight.yml).
    """
    owners = []
    for dev in fleet:
        host = dev["host"]
        owners.append({"name": str(dev["id"]), "kind": "device",
                       "what": f"the device id of host {host}"})
        owners += [{"name": str(c), "kind": "camera", "what": f"a camera of host {host}"}
                   for c in dev["cameras"]]
        owners += [{"name": str(s), "kind": "sender", "what": f"a frames-in sender of host {host}"}
                   for s in dev["senders"]]
    owners += [{"name": str(n), "kind": "subscriber", "what": "a subscriber"} for n in subscribers]
    owners += [{"name": str(n), "kind": "operator", "what": "an operator"} for n in operators]
    return owners


def segedge_ha_nodes(fleet: Iterable[Mapping[str, Any]]) -> List[Dict[str, str]]:
    """The Home Assistant node ids each device may write discovery under (acl.j2 grants
    exactly these), with who claims them, for the clash check: ids that differ can share a
    slug (``cam.1``/``cam_1``), and a camera ``agent_x`` is device ``x``'s agent node."""
    nodes = []
    for dev in fleet:
        host = dev["host"]
        nodes.append({"name": f"segedge_{segedge_ha_slug(dev['id'])}",
                      "what": f"device {dev['id']} of host {host}"})
        nodes += [{"name": f"segedge_{segedge_ha_slug(c)}", "what": f"camera {c} of host {host}"}
                  for c in dev["cameras"]]
        nodes.append({"name": f"segedge_agent_{segedge_ha_slug(dev['id'])}",
                      "what": f"the agent of host {host}"})
    return nodes


def segedge_clashes(owners: Iterable[Mapping[str, Any]]) -> Dict[str, List[str]]:
    """``[{"name": n, "what": ...}, ...]`` -> ``{n: [what, ...]}`` for every name claimed
    more than once (a topic level, an ACL entry and an identity belong to one owner)."""
    seen: Dict[str, List[str]] = {}
    for entry in owners:
        seen.setdefault(str(entry["name"]), []).append(str(entry["what"]))
    return {name: whats for name, whats in seen.items() if len(whats) > 1}


def segedge_sites(fleet: Iterable[Mapping[str, Any]], site_of: Mapping[str, str],
                  brokers: Iterable[Mapping[str, Any]], me: str) -> Dict[str, Any]:
    """Bridged sites (docs/deploy.md, "Sites, bridged") as broker ``me`` sees the inventory.

    ``fleet``: every device (tasks/preflight.yml); ``site_of``: device host -> its
    ``segedge_site`` ("" = none); ``brokers``: ``{"host", "site", "central"}`` per host of the
    broker group (``segedge_broker_site``, ``segedge_broker_central``). Returns ``served``
    (the devices that connect to ``me``: those of its site; a broker without a site serves
    the devices without one), ``bridges`` (a central broker: one per site broker bridged to
    it, ``{"name": "bridge-<site>", "host", "site", "ids", "commands", "ha_nodes"}``),
    ``uplink`` (a site broker: its own bridge, plus ``central``) and ``errors``, each
    naming the host it is about.
    """
    fleet = list(fleet)
    brokers = [dict(b, site=str(b.get("site") or ""), central=str(b.get("central") or ""))
               for b in brokers]
    errors: List[str] = []
    by_site: Dict[str, List[str]] = {}
    for b in brokers:
        by_site.setdefault(b["site"], []).append(str(b["host"]))
    centrals = by_site.get("", [])
    for site, hosts in sorted(by_site.items()):
        if site and len(hosts) > 1:
            errors.append(f"site '{site}' is served by several brokers ({', '.join(hosts)}): "
                          "one broker per site")
    for dev in fleet:
        site = str(site_of.get(dev["host"]) or "")
        if site and site not in by_site:
            errors.append(f"device host {dev['host']}: segedge_site '{site}' is an unknown site "
                          f"(no host of the broker group has segedge_broker_site '{site}'; "
                          f"sites: {sorted(s for s in by_site if s) or 'none'})")

    def central_of(b: Mapping[str, Any]) -> str:
        if b["central"]:
            return b["central"]
        return centrals[0] if len(centrals) == 1 else ""

    def plan(b: Mapping[str, Any]) -> Dict[str, Any]:
        devs = [d for d in fleet if str(site_of.get(d["host"]) or "") == b["site"]]
        ids = [i for d in devs for i in [d["id"], *d["cameras"], *d["senders"]]]
        return {"name": f"bridge-{b['site']}", "host": str(b["host"]), "site": b["site"],
                "central": central_of(b), "devices": [d["id"] for d in devs], "ids": ids,
                "commands": [i for d in devs for i in [d["id"], *d["cameras"]]],
                "ha_nodes": [n["name"] for n in segedge_ha_nodes(devs)]}

    mine = next((b for b in brokers if str(b["host"]) == me), {"host": me, "site": "",
                                                                  "central": ""})
    uplink: Dict[str, Any] = {}
    bridges: List[Dict[str, Any]] = []
    for b in brokers:
        if not b["site"]:
            continue
        central = central_of(b)
        if not central:
            errors.append(f"site broker {b['host']} (site '{b['site']}'): no central broker: "
                          f"set segedge_broker_central to the one broker host without a site "
                          f"(brokers without a site: {centrals or 'none'})")
        elif central not in centrals:
            errors.append(f"site broker {b['host']} (site '{b['site']}'): segedge_broker_central "
                          f"'{central}' is not a host of the broker group without a site")
        elif not plan(b)["devices"]:
            errors.append(f"site broker {b['host']} (site '{b['site']}'): no device has "
                          f"segedge_site '{b['site']}'")
        if central == me:
            bridges.append(plan(b))
        if b["host"] == me:
            uplink = plan(b)
    served = [d for d in fleet if str(site_of.get(d["host"]) or "") == mine["site"]]
    bridge_owners = [{"name": f"bridge-{b['site']}", "kind": "bridge",
                      "what": f"the bridge identity of site broker {b['host']}"}
                     for b in brokers if b["site"]]
    return {"served": served, "bridges": bridges, "uplink": uplink, "errors": errors,
            "bridge_owners": bridge_owners}


class FilterModule:
    """Ansible filter plugin entry point."""

    def filters(self):
        return {"mosquitto_pbkdf2": mosquitto_pbkdf2, "segedge_ha_slug": segedge_ha_slug,
                "segedge_owners": segedge_owners, "segedge_ha_nodes": segedge_ha_nodes,
                "segedge_clashes": segedge_clashes, "segedge_sites": segedge_sites}
