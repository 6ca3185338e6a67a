"""Home Assistant discovery payloads: topics, ids, removal, templates against real-shaped
messages, and keys against HA 2024.1.6's own schemas (dumped by scripts/check_ha_discovery.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jinja2
import jsonschema
import pytest

from edge_agent.control import homeassistant as ha
from edge_agent.control import rules as commands
from edge_agent.control.homeassistant import CameraInfo, DiscoverySettings

HA_KEYS = Path(__file__).parent / "data" / "ha_2024_1_6_mqtt_keys.json"
SCHEMAS = Path(commands.__file__).parents[1] / "protocol" / "schemas"
ON = DiscoverySettings(enabled=True, overlay_interval_s=2.0)
CAM = CameraInfo("cam-01", ("background", "pet"), "pets", "1.0.0", "INT8")


def one_camera(settings=ON):
    return ha.discovery("segedge", "cam-01", [CAM], "0.1.0", settings)


def by_key(msgs):
    return {m.topic.split("/")[-2]: m.config() for m in msgs if not m.is_removal}


def test_topics_follow_the_per_entity_form():
    msgs = one_camera()
    pattern = re.compile(r"^homeassistant/(sensor|binary_sensor|switch|number|select|button|"
                         r"image)/"
                         r"segedge_cam-01/[a-zA-Z0-9_-]+/config$")
    assert all(pattern.match(m.topic) for m in msgs), [m.topic for m in msgs]
    assert len({m.topic for m in msgs}) == len(msgs)
    keys = set(by_key(msgs))
    assert keys == {"state", "pet_coverage", "inference_fps", "latency_p50", "dropped_frames",
                    "paused", "max_publish_fps", "frame_every", "mask_encoding", "snapshot",
                    "reload", "overlay", "confidence", "drift"}


def test_ids_and_device():
    configs = list(by_key(one_camera()).values())
    uids = [c["unique_id"] for c in configs]
    assert len(set(uids)) == len(uids) and all(u.startswith("segedge_cam-01_") for u in uids)
    for cfg in configs:
        assert cfg["device"]["identifiers"] == ["segedge_cam-01"]
        assert cfg["device"]["model"] == "pets 1.0.0 (INT8)"
        assert "via_device" not in cfg["device"]  # one camera: the agent is the camera
        assert re.fullmatch(r"[a-z0-9_]+", cfg["object_id"].replace("-", "_"))


def test_entities_point_at_the_agents_topics():
    cfg = by_key(one_camera())
    assert cfg["paused"]["command_topic"] == commands.set_topic("segedge", "cam-01", "paused")
    assert cfg["paused"]["state_topic"] == commands.state_topic("segedge", "cam-01", "paused")
    assert cfg["max_publish_fps"]["max"] == commands.FPS_RANGE[1]
    assert cfg["mask_encoding"]["options"] == list(commands.ENCODINGS)
    assert cfg["snapshot"]["command_topic"] == "segedge/cam-01/snapshot/set"
    assert cfg["reload"]["command_topic"] == "segedge/cam-01/reload/set"
    assert cfg["overlay"] == {**cfg["overlay"], "image_topic": "segedge/cam-01/overlay",
                              "content_type": "image/jpeg"}
    assert cfg["pet_coverage"]["state_topic"] == "segedge/cam-01/mask"
    assert cfg["inference_fps"]["state_topic"] == "segedge/cam-01/stats"
    # the payloads HA's entities send are commands the agent accepts
    assert isinstance(commands.parse_command("paused/set", cfg["paused"]["payload_on"].encode()),
                      commands.Command)
    assert isinstance(commands.parse_command(
        "snapshot/set", cfg["snapshot"]["payload_press"].encode()), commands.Command)


def test_quality_entities_read_the_retained_quality_topic():
    cfg = by_key(one_camera())
    assert cfg["confidence"]["state_topic"] == cfg["drift"]["state_topic"] == \
        "segedge/cam-01/quality"
    assert cfg["drift"]["device_class"] == "problem"
    drifting = sample("quality")
    assert render(cfg["confidence"]["value_template"], drifting) == "66.9"
    assert render(cfg["drift"]["value_template"], drifting) == "ON"
    assert json.loads(render(cfg["confidence"]["json_attributes_template"], drifting)) == {
        "state": "drifting", "drift_score": 0.93}
    empty = sample("quality", state="no_reference", reference=None, drift=None,
                   window={**drifting["window"], "frames": 0, "uncertain_mean": None})
    assert render(cfg["confidence"]["value_template"], empty) == "None"  # HA: unknown
    assert render(cfg["drift"]["value_template"], empty) == "OFF"
    assert json.loads(render(cfg["confidence"]["json_attributes_template"], empty)) == {
        "state": "no_reference", "drift_score": None}
    off = ha.discovery("segedge", "cam-01", [CameraInfo("cam-01", quality=False)], "0.1.0", ON)
    removed = {m.topic for m in off if m.is_removal}
    assert {"homeassistant/sensor/segedge_cam-01/confidence/config",
            "homeassistant/binary_sensor/segedge_cam-01/drift/config"} <= removed


def test_overlay_off_removes_the_image_entity():
    msgs = one_camera(DiscoverySettings(enabled=True))
    removed = [m.topic for m in msgs if m.is_removal]
    assert removed == ["homeassistant/image/segedge_cam-01/overlay/config"]


def test_discovery_off_is_all_removals_of_the_same_topics():
    on, off = one_camera(), one_camera(DiscoverySettings(enabled=False))
    assert [m.topic for m in off] == [m.topic for m in on]
    assert all(m.is_removal and m.payload == "" for m in off)


def test_several_cameras_hang_off_the_agent_device():
    cams = [CameraInfo("cam-a"), CameraInfo("cam-b", ("background", "cat", "dog"))]
    msgs = ha.discovery("segedge", "host1", cams, "0.1.0", ON)
    configs = [m.config() for m in msgs if not m.is_removal]
    agent = [c for c in configs if c["device"]["identifiers"] == ["segedge_agent_host1"]]
    assert {c["unique_id"] for c in agent} == {"segedge_agent_host1_state",
                                               "segedge_agent_host1_reload"}
    cam_b = [c for c in configs if c["device"]["identifiers"] == ["segedge_cam-b"]]
    assert all(c["device"]["via_device"] == "segedge_agent_host1" for c in cam_b)
    assert {c["unique_id"] for c in cam_b} >= {"segedge_cam-b_cat_coverage",
                                               "segedge_cam-b_dog_coverage"}
    assert not any(c["unique_id"].endswith("_reload") for c in cam_b)
    sensor = next(c for c in cam_b if c["unique_id"] == "segedge_cam-b_inference_fps")
    assert sensor["availability_mode"] == "all"
    assert [a["topic"] for a in sensor["availability"]] == ["segedge/cam-b/status",
                                                            "segedge/host1/status"]
    uids = [c["unique_id"] for c in configs]
    assert len(uids) == len(set(uids))
    # a camera taken out of the config: its topics are cleared next time
    later = ha.discovery("segedge", "host1", cams[:1], "0.1.0", ON)
    stale = ha.stale_topics([m.topic for m in msgs], later)
    assert stale and all("segedge_cam-b" in t for t in stale)


def test_odd_ids_make_safe_topics():
    msgs = ha.discovery("segedge", "cam.01", [CameraInfo("cam.01")], "0.1.0", ON)
    assert all("cam_01" in m.topic and "." not in m.topic.split("/")[2] for m in msgs)


# ---- templates, rendered with Jinja2 on messages that validate against the agent's schemas

def render(template: str, message: dict) -> str:
    env = jinja2.Environment()
    return env.from_string(template).render(value_json=message)


def sample(kind: str, **over) -> dict:
    base = {
        "status": {"schema_version": 1, "device_id": "cam-01", "state": "online", "ts": 1.0,
                   "agent_version": "0.1.0", "device": "CPU", "reason": None,
                   "model": {"name": "pets", "version": "1.0.0", "precision": "INT8"},
                   "session": "3f2a", "seq": 4, "connection": 1},
        "stats": {"schema_version": 1, "device_id": "cam-01", "ts": 1.0, "uptime_s": 5.0,
                  "interval_s": 5.0, "fps": {"capture": 25.0, "inference": 24.5,
                                              "publish": 10.0},
                  "latency_ms": {"p50": 7.25, "p95": 9.0, "p99": 12.0, "count": 50},
                  "frames": {"captured": 125, "inferred": 120, "dropped": 5,
                             "published": 50},
                  "queues": {"capture": 0, "inflight": 1, "reorder": 0, "mqtt_outbound": 0},
                  "device": "CPU", "precision": "INT8",
                  "model": {"name": "pets", "version": "1.0.0", "precision": "INT8"},
                  "process": {"rss_bytes": 1, "cpu_percent": 50.0}, "state": "online",
                  "session": "3f2a", "seq": 2},
        "mask": {"schema_version": 1, "device_id": "cam-01", "frame_id": 3, "captured_at": 1.0,
                 "published_at": 1.01, "latency_ms": 7.0, "width": 2, "height": 2,
                 "classes": ["background", "pet"], "coverage": {"background": 0.8766,
                                                                "pet": 0.1234},
                 "encoding": "png", "mask": "iVBO",
                 "model": {"name": "pets", "version": "1.0.0", "precision": "INT8"},
                 "device": "CPU"},
        "quality": {"schema_version": 1, "device_id": "cam-01", "camera_id": "cam-01",
                    "ts": 1.0, "state": "drifting", "since": 0.5,
                    "model": {"name": "pets", "version": "1.0.0"},
                    "window": {"frames": 240, "seconds": 19.9, "uncertain_mean": 0.3312,
                               "uncertain_p50": 0.32, "uncertain_p90": 0.47,
                               "margin_mean": 0.78, "coverage_mean": 0.41, "unscored": 0},
                    "reference": {"split": "val+test", "frames": 127, "threshold": 0.9,
                                  "uncertain_mean": 0.177},
                    "drift": {"statistic": "quantile", "score": 0.93, "enter": 0.75,
                              "exit": 0.65}},
    }[kind]
    base.update(over)
    jsonschema.validate(base, json.loads((SCHEMAS / f"{kind}.schema.json").read_text()))
    return base


@pytest.mark.parametrize("state,available", [("online", "online"), ("degraded", "online"),
                                             ("offline", "offline")])
def test_availability_template(state, available):
    msg = sample("status", state=state, reason=None if state == "online" else "x")
    assert render(ha.AVAILABILITY_TEMPLATE, msg) == available


def test_sensor_templates_read_the_messages():
    cfg = by_key(one_camera())
    assert render(cfg["pet_coverage"]["value_template"], sample("mask")) == "12.3"
    assert render(cfg["inference_fps"]["value_template"], sample("stats")) == "24.5"
    assert render(cfg["latency_p50"]["value_template"], sample("stats")) == "7.25"
    none = sample("stats", latency_ms={"p50": None, "p95": None, "p99": None, "count": 0})
    assert render(cfg["latency_p50"]["value_template"], none) == "None"  # HA: unknown
    assert render(cfg["dropped_frames"]["value_template"], sample("stats")) == "5"
    st = sample("status", state="degraded", reason="source: no frame for 10s")
    assert render(cfg["state"]["value_template"], st) == "degraded"
    attrs = render(cfg["state"]["json_attributes_template"], st)
    assert json.loads(attrs) == {"reason": "source: no frame for 10s", "device": "CPU"}


# ---- keys against Home Assistant's own discovery schemas

def test_keys_are_known_to_home_assistant():
    """Every key exists in HA 2024.1.6's platform schema and every required key is set.
    The key lists come from HA's voluptuous schemas (scripts/check_ha_discovery.py
    --dump-keys); the full check with HA itself is that script (docs/integrations.md)."""
    cams = [CameraInfo("cam-a"), CameraInfo("cam-b", ("background", "cat", "dog"))]
    msgs = one_camera() + ha.discovery("segedge", "host1", cams, "0.1.0", ON)
    for m in msgs:
        if not m.is_removal:
            assert_known_to_ha(m.topic, m.config())


def assert_known_to_ha(topic: str, cfg: dict) -> None:
    """One discovery payload against HA 2024.1.6's key lists (also used by the agent's
    e2e test on what the running agent publishes)."""
    known = json.loads(HA_KEYS.read_text())
    platform = known[topic.split("/")[1]]
    unknown = set(cfg) - set(platform["keys"])
    assert not unknown, (topic, unknown)
    assert set(platform["required"]) <= set(cfg), (topic, platform["required"])
    assert set(cfg["device"]) <= set(known["device"]["keys"])
    for entry in cfg.get("availability", []):
        assert set(entry) <= set(known["availability"]["keys"])


def test_the_key_check_catches_what_ha_would_drop():
    """The dumped lists really discriminate: a typo'd key and the enum ``options`` that
    MQTT sensors only take from 2024.2 on are not in them (HA would drop them silently)."""
    known = json.loads(HA_KEYS.read_text())
    assert "stat_topic" not in known["sensor"]["keys"]
    assert "options" not in known["sensor"]["keys"]
    assert {"image_topic", "content_type"} <= set(known["image"]["keys"])
    assert known["_source"].startswith("homeassistant 2024.1.6")
