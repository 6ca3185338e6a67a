"""Home Assistant MQTT discovery: the retained config messages that make a camera appear.

Pure (stdlib only): it builds topics and JSON payloads; the MQTT client publishes them
retained (QoS 1) on every connect and publishes the same topics empty to remove them.
It uses the per-entity form ``<discovery_prefix>/<component>/<node_id>/<object_id>/config``
that Home Assistant accepts from 2023.7 on (the ``image`` platform arrived in 2023.7;
the device-based form needs 2024.11+ and is not used). Every payload uses full key
names (no abbreviations) and is checked against Home Assistant 2024.1.6's own
platform schemas by ``scripts/check_ha_discovery.py``.

One HA device per camera (identifiers ``segedge_<camera_id>``); when the agent serves
several cameras it is a device of its own and each camera names it as ``via_device``.
Entities read the agent's existing messages: ``status`` (availability, state sensor),
``stats`` (fps, latency, drops), ``mask`` (coverage), the retained ``quality`` (confidence,
drift), the retained ``<feature>/state`` topics of edge_agent.control.rules, and the
optional ``overlay`` JPEG stream.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from edge_agent.control import rules as commands
from edge_agent.protocol.topics import quality_topic

DEFAULT_DISCOVERY_PREFIX = "homeassistant"
MANUFACTURER = "segedge"

# availability: degraded still publishes (its sensors mean something); offline does not
AVAILABILITY_TEMPLATE = ("{{ 'online' if value_json.state in ('online', 'degraded') "
                         "else 'offline' }}")
_SLUG = re.compile(r"[^a-zA-Z0-9_-]")


def overlay_topic(prefix: str, camera_id: str) -> str:
    """Raw JPEG bytes (the frame with its mask, legend and caption drawn), not retained,
    QoS 0, at most once per ``overlay_interval_s``; off by default."""
    return f"{prefix}/{camera_id}/overlay"


def slug(text: str) -> str:
    """An id safe for discovery topics and entity ids: [a-zA-Z0-9_-] only."""
    return _SLUG.sub("_", text)


def discovery_topic(discovery_prefix: str, component: str, node_id: str,
                    object_id: str) -> str:
    return f"{discovery_prefix}/{component}/{slug(node_id)}/{slug(object_id)}/config"


@dataclass(frozen=True)
class DiscoverySettings:
    """What discovery takes from the config: the ``[homeassistant]`` table (see
    docs/integrations.md), plus ``output.overlay_interval_s`` (the overlay stream is not
    Home Assistant's alone)."""

    enabled: bool = False
    discovery_prefix: str = DEFAULT_DISCOVERY_PREFIX
    overlay_interval_s: float = 0.0  # 0 = no overlay topic and no image entity


@dataclass(frozen=True)
class CameraInfo:
    """What discovery needs to know about one camera and the model it runs."""

    camera_id: str
    classes: Sequence[str] = ("background", "pet")
    model_name: str = ""
    model_version: str = ""
    precision: str = ""
    overlay: Optional[bool] = None  # its overlay stream is on (None: the settings say)
    quality: bool = True  # its retained quality topic is published ([quality])


@dataclass(frozen=True)
class DiscoveryMessage:
    """One retained discovery config; an empty payload removes the entity."""

    topic: str
    payload: str

    @property
    def is_removal(self) -> bool:
        return self.payload == ""

    def config(self) -> Optional[Dict[str, Any]]:
        return json.loads(self.payload) if self.payload else None


def _device_id(kind: str, ident: str) -> str:
    return f"segedge_{slug(ident)}" if kind == "camera" else f"segedge_agent_{slug(ident)}"


def _availability(prefix: str, topics: Sequence[str]) -> Dict[str, Any]:
    entries = [{"topic": t, "value_template": AVAILABILITY_TEMPLATE} for t in topics]
    out: Dict[str, Any] = {"availability": entries}
    if len(entries) > 1:
        out["availability_mode"] = "all"
    return out


class _Builder:
    """Collects the entities of one HA device."""

    def __init__(self, discovery_prefix: str, node: str, device: Dict[str, Any],
                 availability: Dict[str, Any]) -> None:
        self.discovery_prefix = discovery_prefix
        self.node = node
        self.device = device
        self.availability = availability
        self.messages: List[DiscoveryMessage] = []

    def add(self, component: str, key: str, name: str, config: Dict[str, Any],
            available: bool = True) -> None:
        payload = {"name": name, "unique_id": f"{self.node}_{slug(key)}",
                   "object_id": f"{self.node[len('segedge_'):]}_{slug(key)}".lower(),
                   "device": self.device, **config}
        if available:
            payload.update(self.availability)
        topic = discovery_topic(self.discovery_prefix, component, self.node, key)
        self.messages.append(DiscoveryMessage(topic, json.dumps(payload, sort_keys=True)))

    def remove(self, component: str, key: str) -> None:
        self.messages.append(DiscoveryMessage(
            discovery_topic(self.discovery_prefix, component, self.node, key), ""))


# The camera's settings (edge_agent.control.rules) as entities: one row each, the
# command and state topics are the same rule for all of them.
SETTING_ENTITIES = (
    ("switch", commands.PAUSED, "Paused",
     {"payload_on": "ON", "payload_off": "OFF", "icon": "mdi:pause"}),
    ("number", commands.MAX_PUBLISH_FPS, "Publish rate",
     {"min": commands.FPS_RANGE[0], "max": commands.FPS_RANGE[1], "step": 0.5, "mode": "box",
      "unit_of_measurement": "fps", "entity_category": "config"}),
    ("number", commands.FRAME_EVERY, "Frame every Nth mask",
     {"min": commands.FRAME_EVERY_RANGE[0], "max": commands.FRAME_EVERY_RANGE[1], "step": 1,
      "mode": "box", "entity_category": "config"}),
    ("select", commands.MASK_ENCODING, "Mask encoding",
     {"options": list(commands.ENCODINGS), "entity_category": "config"}),
)


def _status_sensor(b: _Builder, status: str) -> None:
    b.add("sensor", "state", "State", {
        # a plain text sensor: MQTT sensors take no enum ``options`` before HA 2024.2
        "state_topic": status, "value_template": "{{ value_json.state }}",
        "json_attributes_topic": status,
        "json_attributes_template": "{{ {'reason': value_json.reason, "
                                    "'device': value_json.device} | tojson }}",
        "icon": "mdi:heart-pulse"}, available=False)


def _reload_button(b: _Builder, prefix: str, agent_id: str) -> None:
    b.add("button", commands.RELOAD, "Reload model", {
        "command_topic": commands.set_topic(prefix, agent_id, commands.RELOAD),
        "payload_press": "PRESS", "device_class": "restart",
        "entity_category": "config"})


def camera_discovery(prefix: str, agent_id: str, camera: CameraInfo, sw_version: str,
                     settings: DiscoverySettings) -> List[DiscoveryMessage]:
    """Every discovery message of one camera (plus removals of entities switched off)."""
    cid = camera.camera_id
    status = f"{prefix}/{cid}/status"
    avail_topics = [status] if agent_id == cid else [status, f"{prefix}/{agent_id}/status"]
    model = " ".join(p for p in (camera.model_name, camera.model_version) if p)
    device: Dict[str, Any] = {"identifiers": [_device_id("camera", cid)], "name": cid,
                              "manufacturer": MANUFACTURER, "sw_version": sw_version,
                              "model": f"{model} ({camera.precision})" if camera.precision
                              else (model or "segmentation camera")}
    if agent_id != cid:
        device["via_device"] = _device_id("agent", agent_id)
    b = _Builder(settings.discovery_prefix, _device_id("camera", cid), device,
                 _availability(prefix, avail_topics))
    _status_sensor(b, status)
    mask, stats = f"{prefix}/{cid}/mask", f"{prefix}/{cid}/stats"
    for name in list(camera.classes)[1:]:  # index 0 is the background
        key = f"{slug(name)}_coverage"
        b.add("sensor", key, f"{name.capitalize()} coverage", {
            "state_topic": mask, "unit_of_measurement": "%", "state_class": "measurement",
            "value_template": f"{{{{ (value_json.coverage[{json.dumps(name)}] * 100) "
                              "| round(1) }}",
            "suggested_display_precision": 1, "icon": "mdi:paw"})
    b.add("sensor", "inference_fps", "Inference rate", {
        "state_topic": stats, "value_template": "{{ value_json.fps.inference }}",
        "unit_of_measurement": "fps", "state_class": "measurement",
        "suggested_display_precision": 1, "icon": "mdi:speedometer"})
    b.add("sensor", "latency_p50", "Latency p50", {
        # no ``duration`` device class: HA would show it converted to seconds
        "state_topic": stats, "value_template": "{{ value_json.latency_ms.p50 }}",
        "unit_of_measurement": "ms", "state_class": "measurement",
        "suggested_display_precision": 1, "icon": "mdi:timer-outline"})
    quality = quality_topic(prefix, cid)
    if camera.quality:
        b.add("sensor", "confidence", "Confidence", {
            # 1 - the window's share of unsure pixels; None (HA: unknown) while empty
            "state_topic": quality, "unit_of_measurement": "%", "state_class": "measurement",
            "value_template": "{{ none if value_json.window.uncertain_mean is none else "
                              "((1 - value_json.window.uncertain_mean) * 100) | round(1) }}",
            "json_attributes_topic": quality,
            "json_attributes_template": "{{ {'state': value_json.state, 'drift_score': "
                                        "value_json.drift.score if value_json.drift "
                                        "else none} | tojson }}",
            "suggested_display_precision": 1, "icon": "mdi:check-decagram"})
        b.add("binary_sensor", "drift", "Model drift", {
            "state_topic": quality, "device_class": "problem",
            "value_template": "{{ 'ON' if value_json.state == 'drifting' else 'OFF' }}",
            "payload_on": "ON", "payload_off": "OFF"})
    else:
        b.remove("sensor", "confidence")
        b.remove("binary_sensor", "drift")
    b.add("sensor", "dropped_frames", "Dropped frames", {
        "state_topic": stats, "value_template": "{{ value_json.frames.dropped }}",
        "state_class": "total_increasing", "entity_category": "diagnostic",
        "icon": "mdi:image-off"})
    for component, feature, name, extra in SETTING_ENTITIES:
        b.add(component, feature, name, {
            "command_topic": commands.set_topic(prefix, cid, feature),
            "state_topic": commands.state_topic(prefix, cid, feature), **extra})
    b.add("button", commands.SNAPSHOT, "Snapshot", {
        "command_topic": commands.set_topic(prefix, cid, commands.SNAPSHOT),
        "payload_press": "PRESS", "icon": "mdi:camera"})
    if agent_id == cid:
        _reload_button(b, prefix, agent_id)
    if camera.overlay if camera.overlay is not None else settings.overlay_interval_s > 0:
        b.add("image", "overlay", "Overlay", {
            "image_topic": overlay_topic(prefix, cid), "content_type": "image/jpeg"})
    else:
        b.remove("image", "overlay")
    return b.messages


def agent_discovery(prefix: str, agent_id: str, sw_version: str,
                    settings: DiscoverySettings) -> List[DiscoveryMessage]:
    """The agent's own device (several cameras): its state and the reload button."""
    device = {"identifiers": [_device_id("agent", agent_id)], "name": f"{agent_id} agent",
              "manufacturer": MANUFACTURER, "model": "segedge agent",
              "sw_version": sw_version}
    b = _Builder(settings.discovery_prefix, _device_id("agent", agent_id), device,
                 _availability(prefix, [f"{prefix}/{agent_id}/status"]))
    _status_sensor(b, f"{prefix}/{agent_id}/status")
    _reload_button(b, prefix, agent_id)
    return b.messages


def discovery(prefix: str, agent_id: str, cameras: Sequence[CameraInfo], sw_version: str,
              settings: DiscoverySettings) -> List[DiscoveryMessage]:
    """All messages to publish (retained) on connect. Discovery off: all removals."""
    msgs: List[DiscoveryMessage] = []
    if not any(c.camera_id == agent_id for c in cameras):
        msgs += agent_discovery(prefix, agent_id, sw_version, settings)
    for camera in cameras:
        msgs += camera_discovery(prefix, agent_id, camera, sw_version, settings)
    return msgs if settings.enabled else removals(msgs)


def removals(messages: Sequence[DiscoveryMessage]) -> List[DiscoveryMessage]:
    """Empty retained configs for the same topics: HA deletes those entities."""
    return [DiscoveryMessage(m.topic, "") for m in messages]


def stale_topics(previous: Sequence[str], current: Sequence[DiscoveryMessage]) -> List[str]:
    """Topics published last time but not now (a removed camera or class): clear them."""
    now = {m.topic for m in current}
    return sorted(t for t in previous if t not in now)
