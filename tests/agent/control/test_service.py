"""control.py's file handling and the new config keys (pure, no broker)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from edge_agent import config as cf
from edge_agent.control.homeassistant import CameraInfo, DiscoverySettings, discovery
from edge_agent.control.rules import CommandState
from edge_agent.control.service import load_states, save_states
from tests.agent.helpers import to_toml

BASE = {"cam-01": CommandState(False, 10.0, 0, "png")}


def test_saved_states_round_trip_private(tmp_path):
    path = tmp_path / "d" / "commands.json"
    save_states(str(path), {"cam-01": CommandState(True, 2.5, 3, "rle")})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_states(str(path), BASE) == {"cam-01": CommandState(True, 2.5, 3, "rle")}


@pytest.mark.parametrize("content", [
    "not json", "[]", json.dumps({"cam-01": {"schema_version": 1, "paused": "maybe"}}),
    json.dumps({"cam-01": {"schema_version": 1, "max_publish_fps": 1e9}}),
    json.dumps({"cam-01": {"schema_version": 2, "paused": True}}),
    json.dumps({"cam-01": {"schema_version": 1, "evil": 1}})])
def test_a_bad_state_file_is_ignored_and_the_config_runs(tmp_path, content, caplog):
    path = tmp_path / "commands.json"
    path.write_text(content)
    assert load_states(str(path), BASE) == BASE
    assert "ignored" in caplog.text


def test_missing_file_and_other_cameras(tmp_path):
    assert load_states(str(tmp_path / "none.json"), BASE) == BASE
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"cam-09": {"schema_version": 1, "paused": True}}))
    assert load_states(str(path), BASE) == BASE


def _load(tmp_path, config_data, text):
    """The minimal config (without device_id: the default) plus ``text``."""
    data = {k: v for k, v in config_data.items() if k != "device_id"}
    path = tmp_path / "a.toml"
    path.write_text(to_toml(data) + text)
    return cf.load(str(path), environ={})[0]


def test_new_keys_defaults_and_checks(tmp_path, config_data):
    cfg = _load(tmp_path, config_data, "")
    assert (cfg.homeassistant.enabled, cfg.homeassistant.discovery_prefix) == \
        (False, "homeassistant")
    assert (cfg.commands.enabled, cfg.commands.persist, cfg.output.overlay_interval_s) == \
        (True, False, 0.0)
    assert cf.state_file(cfg) == ""
    cfg = _load(tmp_path, config_data,
                '[commands]\npersist = true\nstate_file = "/var/lib/s/c.json"\n')
    assert cf.state_file(cfg) == "/var/lib/s/c.json"
    for text, msg in [("[commands]\npersist = true\n", "commands.persist: needs"),
                      ("[commands]\nrate_per_s = 0\n", "commands.rate_per_s: must be > 0"),
                      ("[commands]\nburst = 0\n", "commands.burst: must be 1..1000"),
                      ('[homeassistant]\ndiscovery_prefix = "ha/#"\n',
                       "homeassistant.discovery_prefix"),
                      ("[output]\noverlay_interval_s = -1\n", "output.overlay_interval_s"),
                      ("[homeassistant]\nenable = true\n", "homeassistant.enable: unknown key")]:
        with pytest.raises(cf.ConfigError, match=msg.replace(".", r"\.")):
            _load(tmp_path, config_data, text)


class _Comms:
    """Records what Control asks of the MQTT client (no broker needed for this)."""

    def __init__(self) -> None:
        self.on_message = None
        self.subs: list = []
        self.retained: list = []

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.subs.append(topic)

    def publish_retained(self, topic: str, payload: str) -> None:
        self.retained.append((topic, payload))


@pytest.mark.parametrize("enabled", [True, False])
def test_commands_disabled_means_no_subscription_but_states(tmp_path, config_data, enabled):
    import threading

    from edge_agent.control.service import Control

    cfg = _load(tmp_path, config_data, f"[commands]\nenabled = {'true' if enabled else 'false'}\n")
    comms, paused = _Comms(), []
    stop = threading.Event()
    cams = [CameraInfo("cam-01")]
    control = Control(cfg, comms, stop, lambda: cams, lambda: None,
                      lambda cid, p: paused.append((cid, p)))
    control.start()
    try:
        assert bool(comms.subs) == enabled and (comms.on_message is not None) == enabled
        assert comms.subs in ([], ["segedge/cam-01/+/set"])
        assert paused == [("cam-01", False)]
        control.on_connect()
        topics = dict(comms.retained)
        assert topics["segedge/cam-01/paused/state"] == "OFF"
        assert json.loads(topics["segedge/cam-01/settings"])["max_publish_fps"] == 10.0
        # discovery off (the default): the same topics published empty
        every = {m.topic for m in discovery("segedge", "cam-01", cams, "0",
                                            DiscoverySettings(enabled=True))}
        assert {t: p for t, p in comms.retained if t.startswith("homeassistant/")} == \
            dict.fromkeys(every, "") and len(every) == 14  # with the quality entities
    finally:
        stop.set()
        control.join(2)


class _ReplyComms(_Comms):
    def __init__(self) -> None:
        super().__init__()
        self.replies: list = []

    def publish_reply(self, topic, payload, correlation_data=None) -> bool:
        self.replies.append((topic, json.loads(payload)))
        return True


def _control(tmp_path, config_data, extra=""):
    import threading

    from edge_agent.control.service import Control

    cfg = _load(tmp_path, config_data, extra)
    comms, paused, counts = _ReplyComms(), [], []
    control = Control(cfg, comms, threading.Event(), lambda: [CameraInfo("cam-01")],
                      lambda: None, lambda cid, p: paused.append((cid, p)), count=counts.append)
    return control, comms, paused, counts


@pytest.mark.parametrize("response_topic", ["a/+/b", "#", "segedge/cam-01/status",
                                            "segedge/other/reply/x"])
def test_a_command_with_a_foreign_response_topic_is_not_applied_at_all(tmp_path, config_data,
                                                                       response_topic):
    """Issue 17 (3): paused=ON with a wildcard response topic used to pause the camera and
    publish the retained state, then raise before health heard of it. Now nothing of it
    happens: not applied, not persisted, not reported, nothing published; counted."""
    state = tmp_path / "state" / "commands.json"
    control, comms, paused, counts = _control(
        tmp_path, config_data, f'[commands]\npersist = true\nstate_file = "{state}"\n')
    control._handle("segedge/cam-01/paused/set", b"ON", False, response_topic, b"c", 2)
    assert not control.state("cam-01").paused and paused == [] and not state.exists()
    assert comms.retained == [] and comms.replies == []
    assert counts == ["reply_topic_refused"]
    control._handle("segedge/cam-01/paused/set", b"ON", False, "segedge/cam-01/reply/op", b"c",
                    2)
    assert control.state("cam-01").paused and paused == [("cam-01", True)]
    assert json.loads(state.read_text())["cam-01"]["paused"] is True
    assert ("segedge/cam-01/paused/state", "ON") in comms.retained
    assert comms.replies[-1] == ("segedge/cam-01/reply/op", comms.replies[-1][1])
    assert comms.replies[-1][1]["result"] == "accepted"


def test_a_command_whose_state_cannot_be_persisted_is_refused_whole(tmp_path, config_data):
    """Persist first: a write that fails refuses the command (state, health unchanged)."""
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the state directory should be
    control, comms, paused, counts = _control(
        tmp_path, config_data, f'[commands]\npersist = true\nstate_file = "{blocker / "c.json"}"\n')
    control._handle("segedge/cam-01/paused/set", b"ON", False, "segedge/cam-01/reply/op", b"c",
                    2)
    assert not control.state("cam-01").paused and paused == []
    assert ("segedge/cam-01/paused/state", "OFF") in comms.retained
    reply = comms.replies[-1][1]
    assert reply["result"] == "refused" and "state file cannot be written" in reply["reason"]


def test_a_rate_limited_command_is_counted_and_answered(tmp_path, config_data):
    control, comms, paused, counts = _control(tmp_path, config_data, "[commands]\nburst = 1\n"
                                                                     "rate_per_s = 0.001\n")
    control._handle("segedge/cam-01/max_publish_fps/set", b"3", False, None, None, 1)
    control._handle("segedge/cam-01/paused/set", b"ON", False, "segedge/cam-01/reply/op", b"c",
                    2)
    assert counts == ["commands_rate_limited"] and not control.state("cam-01").paused
    assert comms.replies[-1][1]["reason"].startswith("rate_limited:")
