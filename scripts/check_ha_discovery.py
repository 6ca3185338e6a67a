"""Check segedge's discovery payloads with Home Assistant's own MQTT platform schemas.

Run with a Python that has Home Assistant installed (not the project's venv: HA pins
its own dependencies), from the repository root::

    python3.11 -m venv /tmp/ha && /tmp/ha/bin/pip install homeassistant==2024.1.6
    PYTHONPATH=. /tmp/ha/bin/python scripts/check_ha_discovery.py \
        [--dump-keys tests/agent/control/data/ha_2024_1_6_mqtt_keys.json]

For every payload (one camera; an agent with two cameras): HA's ``DISCOVERY_SCHEMA`` of
the platform must accept it, and no key may be silently dropped (the schemas remove
unknown keys, so a typo would pass unnoticed). ``--dump-keys`` writes the key lists the
unit tests check against, so CI needs no Home Assistant. Exit 0 when all pass.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import voluptuous as vol

from edge_agent.control import homeassistant as ha

COMPONENTS = ("sensor", "binary_sensor", "switch", "number", "select", "button", "image")


def _dict_schema(schema: Any) -> Optional[Dict[Any, Any]]:
    """The first dict inside a (possibly nested) vol.All/vol.Schema."""
    if isinstance(schema, dict):
        return schema
    if isinstance(schema, vol.Schema):
        return _dict_schema(schema.schema)
    for inner in getattr(schema, "validators", ()) or ():
        found = _dict_schema(inner)
        if found is not None:
            return found
    return None


def keys_of(schema: Any) -> Dict[str, List[str]]:
    d = _dict_schema(schema) or {}
    keys = sorted(str(k) for k in d)
    required = sorted(str(k) for k in d if isinstance(k, vol.Required))
    return {"keys": keys, "required": required}


def availability_entry_keys(list_schema: Any) -> Dict[str, List[str]]:
    """Keys of one entry of the ``availability`` list (a dict inside a list inside All)."""
    outer = _dict_schema(list_schema) or {}
    value = next(v for k, v in outer.items() if str(k) == "availability")
    for inner in getattr(value, "validators", ()) or ():
        if isinstance(inner, list) and inner:
            return keys_of(inner[0])
    raise SystemExit("cannot find the availability entry schema in this HA version")


def payloads() -> List[ha.DiscoveryMessage]:
    on = ha.DiscoverySettings(enabled=True, overlay_interval_s=2.0)
    one = ha.discovery("segedge", "cam-01", [ha.CameraInfo("cam-01", ("background", "pet"),
                                                           "pets-mobile", "1.0.0", "INT8")],
                       "0.1.0", on)
    two = ha.discovery("segedge", "host1", [ha.CameraInfo("cam-a"),
                                            ha.CameraInfo("cam-b", ("background", "cat"))],
                       "0.1.0", on)
    return [m for m in one + two if not m.is_removal]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dump-keys", type=Path, help="write the platforms' key lists here")
    args = p.parse_args(argv)
    import homeassistant.bootstrap  # noqa: F401  (HA modules import cleanly only after it)
    from homeassistant.components.mqtt import mixins
    from homeassistant.const import __version__ as ha_version

    platforms = {c: importlib.import_module(f"homeassistant.components.mqtt.{c}")
                 for c in COMPONENTS}
    failures = 0
    counts: Dict[str, int] = {}
    for msg in payloads():
        component = msg.topic.split("/")[1]
        config = msg.config()
        try:
            validated = platforms[component].DISCOVERY_SCHEMA(dict(config))
        except vol.Invalid as exc:
            failures += 1
            print(f"FAIL {msg.topic}: {exc}")
            continue
        dropped = sorted(set(config) - set(validated))
        dropped += [f"device.{k}" for k in sorted(set(config["device"])
                                                  - set(validated["device"]))]
        for i, entry in enumerate(config.get("availability", [])):
            dropped += [f"availability[{i}].{k}" for k in sorted(
                set(entry) - set(validated["availability"][i]))]
        if dropped:
            failures += 1
            print(f"FAIL {msg.topic}: keys HA drops: {', '.join(dropped)}")
            continue
        counts[component] = counts.get(component, 0) + 1
        print(f"ok   {msg.topic}")
    summary = ", ".join(f"{n} {c}" for c, n in sorted(counts.items()))
    print(f"Home Assistant {ha_version}: {sum(counts.values())} payloads accepted ({summary}), "
          f"{failures} refused")
    if args.dump_keys:
        dump = {c: keys_of(platforms[c].DISCOVERY_SCHEMA) for c in COMPONENTS}
        dump["device"] = keys_of(mixins.MQTT_ENTITY_DEVICE_INFO_SCHEMA)
        dump["availability"] = availability_entry_keys(mixins.MQTT_AVAILABILITY_LIST_SCHEMA)
        dump["_source"] = f"homeassistant {ha_version} (scripts/check_ha_discovery.py)"
        args.dump_keys.parent.mkdir(parents=True, exist_ok=True)
        args.dump_keys.write_text(json.dumps(dump, indent=1, sort_keys=True) + "\n")
        print(f"wrote {args.dump_keys}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
