"""Mosquitto password-file hashes computed on the controller, reproducibly; the fleet's names.

``mosquitto_passwd`` salts at random, so a password file it writes changes on every run.
This filter writes the same ``$7$`` (PBKDF2-HMAC-SHA512) entry Mosquitto 2.x verifies,
with a salt derived from the password and the user name: the entry changes exactly when
the password does, which keeps the role idempotent and rotation visible.

The other filters list who claims each topic level, identity and Home Assistant node id
of the fleet (devices, their cameras and frames-in senders, accounts), so the preflight
can refuse a name claimed twice, and give acl.j2 the agent's own node-id slug.
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


class FilterModule:
    """Ansible filter plugin entry point."""

    def filters(self):
        return {"mosquitto_pbkdf2": mosquitto_pbkdf2, "segedge_ha_slug": segedge_ha_slug,
                "segedge_owners": segedge_owners, "segedge_ha_nodes": segedge_ha_nodes,
                "segedge_clashes": segedge_clashes}
