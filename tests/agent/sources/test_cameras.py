"""Many cameras and frames in: config, health scopes, frame checks, the frames-in service."""

from __future__ import annotations

import base64
import json
import threading
import time

import cv2
import numpy as np
import pytest

from edge_agent.cameras import Camera, Outputs
from edge_agent.config import CameraConfig, ConfigError, FramesInConfig, SourceConfig, load
from edge_agent.config import OutputConfig as Out
from edge_agent.health.sdnotify import Notifier
from edge_agent.health.state import Health
from edge_agent.sources.frames_in import (
    FrameRefused,
    FramesIn,
    SenderHooks,
    decode_frame,
    parse_frame,
    sender_of,
)
from edge_agent.sources.slots import FrameSlots
from tests.agent.helpers import to_toml


@pytest.fixture
def base(config_data):
    """Two cameras (a file and an unreachable stream) on the minimal config."""
    clip = config_data.pop("source")["uri"]
    return {**config_data, "device_id": "edge-01",
            "source": {"stall_timeout_s": 4.0},
            "output": {"max_publish_fps": 3.0},
            "cameras": [{"id": "a", "uri": clip},
                        {"id": "b", "uri": "http://127.0.0.1:9/x", "stall_timeout_s": 9.0,
                         "max_publish_fps": 0.5, "frame_every": 2}]}


def _write(tmp_path, data):
    path = tmp_path / "a.toml"
    path.write_text(to_toml(data))
    return str(path)


def test_cameras_inherit_source_and_output_defaults(tmp_path, base):
    cfg, _ = load(_write(tmp_path, base), {})
    a, b = cfg.cameras
    assert cfg.multi_camera and [a.id, b.id] == ["a", "b"]
    assert (a.source.stall_timeout_s, a.max_publish_fps, a.frame_every) == (4.0, 3.0, 0)
    assert (b.source.stall_timeout_s, b.max_publish_fps, b.frame_every) == (9.0, 0.5, 2)
    assert a.source is not cfg.source and cfg.source.stall_timeout_s == 4.0


def test_single_camera_form_is_one_camera_with_the_device_id(tmp_path, base):
    del base["cameras"]
    base["source"]["uri"] = "http://127.0.0.1:9/x"
    cfg, _ = load(_write(tmp_path, base), {"SEGEDGE_DEVICE_ID": "cam-07"})
    assert [c.id for c in cfg.cameras] == ["cam-07"] and not cfg.multi_camera
    assert cfg.cameras[0].source is cfg.source


@pytest.mark.parametrize("patch, needle", [
    (lambda d: d["cameras"][1].update(id="a"), "cameras[2].id: 'a' is used by an earlier"),
    (lambda d: d["cameras"][0].update(id="a/b"), "cameras[1].id: must be 1..128"),
    (lambda d: d["cameras"][0].pop("uri"), "cameras[1].uri: missing"),
    (lambda d: d["cameras"][0].update(fps=-1), "cameras[1].fps: must be >= 0"),
    (lambda d: d["cameras"][1].update(mask_encoding="gif"), "cameras[2].mask_encoding: must be"),
    (lambda d: d["cameras"][0].update(colour="red"), "cameras[1].colour: unknown key"),
    (lambda d: d["cameras"][0].update(uri="/no/such/file"), "cameras[1].uri: no such file"),
    (lambda d: d["cameras"][0].update(uri="ftp://x/y"), "cameras[1].uri: bad URL"),
    (lambda d: d["cameras"][0].update(id="edge-01"), "cameras[1].id: 'edge-01' is the device_id"),
    (lambda d: d["source"].update(uri="/dev/video0"), "source.uri: set either [source] uri"),
    (lambda d: d.update(cameras=[]), "cameras: no camera and frames_in is off"),
    (lambda d: d.update(frames_in={"enabled": True, "topic": "a/#"}), "frames_in.topic"),
    (lambda d: d.update(frames_in={"topic": "a/+/b/+"}), "frames_in.topic"),
    (lambda d: d.update(frames_in={"senders": ["a"]}), "frames_in.senders: 'a' is already"),
    (lambda d: d.update(frames_in={"max_bytes": 10}), "frames_in.max_bytes: must be"),
])
def test_bad_camera_configs_name_the_key(tmp_path, base, patch, needle):
    patch(base)
    with pytest.raises(ConfigError) as err:
        load(_write(tmp_path, base), {})
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_service_without_cameras_and_one_camera_named_like_the_agent(tmp_path, base):
    base["cameras"] = []
    base["frames_in"] = {"enabled": True}
    cfg, _ = load(_write(tmp_path, base), {})
    assert cfg.cameras == [] and cfg.multi_camera
    base["cameras"] = [{"id": "edge-01", "uri": "http://127.0.0.1:9/x"}]
    base["frames_in"] = {"enabled": False}
    cfg, _ = load(_write(tmp_path, base), {})
    assert [c.id for c in cfg.cameras] == ["edge-01"] and not cfg.multi_camera


def test_health_scopes_agent_and_cameras(tmp_path):
    path = tmp_path / "health.json"
    health = Health(str(path), Notifier({}), agent_id="edge-01")
    for cid, counted in (("a", True), ("b", True), ("sender", False)):
        health.add_camera(cid, counted)
    health.set("source", "source: no frame for 6.0 s", camera="b")
    health.set("source", "source: no frame from sender for 31.0 s", camera="sender")
    assert health.view().reason == "b: source: no frame for 6.0 s"  # senders do not count
    assert health.view("a").state == "online" and health.view("b").state == "degraded"
    assert health.view("sender").reason == "source: no frame from sender for 31.0 s"
    health.set("mqtt", "mqtt: connection refused by 127.0.0.1:1")  # shared: everyone
    assert health.view("a").reason == "mqtt: connection refused by 127.0.0.1:1"
    assert health.view().reason == ("b: source: no frame for 6.0 s; "
                                    "mqtt: connection refused by 127.0.0.1:1")
    changes = health.take_camera_changes()
    assert set(changes) == {"a", "b", "sender"} and health.take_camera_changes() == {}
    assert health.flush()
    data = json.loads(path.read_text())
    assert data["cameras"]["b"] == {"state": "degraded", "reason": "source: no frame for 6.0 s;"
                                    " mqtt: connection refused by 127.0.0.1:1", "counted": True}
    health.remove_camera("sender")
    assert health.flush()
    assert "sender" not in json.loads(path.read_text())["cameras"]
    assert not health.set("source", "late", camera="sender")  # gone: ignored
    single = Health("", Notifier({}), agent_id="cam-01")
    single.add_camera("cam-01")  # the agent's own id: its components are the agent's
    single.set("source", "source: stream ended", camera="cam-01")
    assert single.view().reason == "source: stream ended" == single.view("cam-01").reason


def _jpeg(w=64, h=48) -> bytes:
    img = np.full((h, w, 3), 120, np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


def test_parse_frame_takes_jpeg_png_and_json_and_refuses_the_rest():
    jpg = _jpeg()
    png = cv2.imencode(".png", np.zeros((5, 7, 3), np.uint8))[1].tobytes()
    assert (parse_frame(jpg, 1 << 20, 4096).width, parse_frame(png, 1 << 20, 4096).height) == (
        64, 5)
    msg = json.dumps({"image": base64.b64encode(jpg).decode(), "frame_id": 9,
                      "captured_at": 1.5}).encode()
    frame = parse_frame(msg, 1 << 20, 4096)
    assert (frame.frame_id, frame.captured_at, frame.data) == (9, 1.5, jpg)
    for payload, needle in [
        (b"GIF89a....", "unknown format"), (b"", "unknown format"),
        (jpg + b"\0" * 1000, "over frames_in.max_bytes"), (b"{not json", "not valid UTF-8 JSON"),
        (b'{"image": 5}', 'expected an object with "image"'),
        (b'{"image": "***"}', "not valid base64"),
        (b'{"image": "", "frame_id": -1}', "frame_id must be an integer"),
        (b'{"image": "", "captured_at": "x"}', "captured_at must be a number"),
        (b"\xff\xd8\xff\xe0garbage-without-a-frame-header", "undecodable image"),
        (_jpeg(5000, 8), "outside 1..4096 per side"),
    ]:
        with pytest.raises(FrameRefused) as err:
            parse_frame(payload, 1000 if needle.startswith("over") else 1 << 20, 4096)
        assert needle in str(err.value), (payload[:20], str(err.value))


def test_a_tiny_image_claiming_a_huge_frame_is_refused_before_decoding():
    """Issue 17 (7): 630 bytes claiming 4096x4096 (libjpeg would fill in a 50 MB frame)."""
    from tests.agent.helpers import forged_jpeg

    forged = forged_jpeg()
    assert len(forged) < 700
    with pytest.raises(FrameRefused, match="claims 4096x4096 in .* bytes: over 1024 pixels"):
        parse_frame(forged, 1 << 22, 4096)
    b64 = json.dumps({"image": base64.b64encode(forged).decode()}).encode()
    with pytest.raises(FrameRefused, match="pixels per byte"):
        parse_frame(b64, 1 << 22, 4096)
    # max_pixels: a real image over it is refused from its header too
    big = cv2.imencode(".jpg", np.random.default_rng(1).integers(
        0, 255, (600, 800, 3), np.uint8))[1].tobytes()
    assert parse_frame(big, 1 << 22, 4096).width == 800
    with pytest.raises(FrameRefused, match=r"over 100000 pixels \(frames_in.max_pixels\)"):
        parse_frame(big, 1 << 22, 4096, max_pixels=100_000)


@pytest.mark.parametrize("kind", ["jpeg", "jpeg-optimized", "png-grey-9", "png-colour-9"])
def test_real_blank_frames_pass_the_pixels_per_byte_bound(kind):
    """The most compressible real frames (one colour): libjpeg ~170 pixels a byte, deflate
    on 8-bit grey ~1030: under the bounds (JPEG 1024, PNG 4096)."""
    blank = np.zeros((1080, 1920, 3), np.uint8)
    if kind == "jpeg":
        raw = cv2.imencode(".jpg", blank)[1].tobytes()
    elif kind == "jpeg-optimized":
        raw = cv2.imencode(".jpg", blank, [cv2.IMWRITE_JPEG_OPTIMIZE, 1,
                                           cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    elif kind == "png-grey-9":
        raw = cv2.imencode(".png", blank[:, :, 0], [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()
    else:
        raw = cv2.imencode(".png", blank, [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()
    frame = parse_frame(raw, 1 << 22, 4096)
    assert (frame.width, frame.height) == (1920, 1080)
    assert decode_frame(frame).shape == (1080, 1920, 3)


def test_the_subscriber_refuses_a_forged_frame_before_decoding():
    from edge_agent.protocol.encoding import image_budget_problem
    from tests.agent.helpers import forged_jpeg

    assert "pixels per byte" in image_budget_problem(forged_jpeg(), 4096, 4096)
    assert image_budget_problem(_jpeg(), 64, 48) is None


def test_sender_of_reads_the_plus_level():
    assert sender_of("segedge/edge/frames_in/+", "segedge/edge/frames_in/esp32") == "esp32"
    assert sender_of("in/+/jpeg", "in/cam9/jpeg") == "cam9"
    assert sender_of("segedge/edge/frames_in/+", "segedge/edge/frames_in/a/b") is None
    assert sender_of("segedge/edge/frames_in/+", "segedge/other/frames_in/a") is None


class _Service:
    """A FramesIn over real slots and cameras, with the agent's hooks recorded."""

    def __init__(self, **cfg):
        self.slots, self.stop = FrameSlots(), threading.Event()
        self.cameras, self.closed, self.states, self.replies = {}, [], [], []
        self.refused = self.reply_refused = 0

        def open_(sender):
            cam = Camera(CameraConfig.from_sections(sender, SourceConfig(uri="mqtt:x"), Out(),
                                                    sender=True), Outputs(mask=lambda t: True))
            self.slots.add(sender)
            self.cameras[sender] = cam
            return cam

        def refuse():
            self.refused += 1

        def reply_refused():
            self.reply_refused += 1

        hooks = SenderHooks(open=open_, close=lambda s, r: self.closed.append((s, r)),
                            state=lambda s, r: self.states.append((s, r)), refused=refuse,
                            reply=lambda t, text, c: self.replies.append((t, json.loads(text), c))
                            or True, reply_refused=reply_refused)
        self.service = FramesIn(FramesInConfig(enabled=True, **cfg), "p/edge/frames_in/+",
                                {"edge", "cam-a"}, self.slots, hooks, self.stop, prefix="p")
        self.service.start()

    def send(self, sender, payload, reply=None, corr=None, retained=False):
        self.service.incoming(f"p/edge/frames_in/{sender}", payload, retained, reply, corr)

    def close(self):
        self.stop.set()
        self.service.join(2)


def _wait(pred, timeout=3.0):
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.01)
    return pred()


def test_frames_in_serves_senders_and_refuses_bad_frames_with_replies():
    svc = _Service(max_senders=2, max_bytes=50_000, stall_timeout_s=0.3, forget_after_s=0.8)
    try:
        svc.send("esp1", _jpeg(), reply="p/esp1/reply/a", corr=b"c1")
        assert _wait(lambda: svc.slots.depth("esp1") == 1)
        cid, frame = svc.slots.take(0.1)
        assert (cid, frame.frame_id, frame.reply_to, frame.correlation) == (
            "esp1", 1, "p/esp1/reply/a", b"c1")
        svc.send("esp1", b"garbage", reply="p/esp1/reply/a", corr=b"c2")
        svc.send("esp1", b"\x00" * 60_000)  # over max_bytes: refused on paho's thread
        assert _wait(lambda: svc.cameras["esp1"].counters.snapshot()["refused"] == 2)
        svc.send("edge", _jpeg())  # the agent's own id: refused, the agent counts it
        svc.send("esp2", _jpeg())
        assert _wait(lambda: "esp2" in svc.cameras)
        svc.send("esp3", _jpeg(), reply="p/esp3/reply/b", corr=b"c3")  # a third sender: over 2
        svc.send("esp2", _jpeg(), retained=True)
        assert _wait(lambda: len(svc.replies) == 2 and svc.refused == 2
                     and svc.cameras["esp2"].counters.snapshot()["refused"] == 1)
        errors = {r[2]: r[1]["error"] for r in svc.replies}
        assert "unknown format" in errors[b"c2"] and "max_senders" in errors[b"c3"]
        assert all(r[1]["schema_version"] == 1 for r in svc.replies)
        # silent senders: degraded after stall_timeout_s, then forgotten (offline)
        assert _wait(lambda: any(s == "esp1" and (r or "").startswith(
            "source: no frame from sender for") for s, r in svc.states))
        assert _wait(lambda: sorted(s for s, _ in svc.closed) == ["esp1", "esp2"])
        assert all(r.startswith("sender gone: no frame for") for _, r in svc.closed)
        assert svc.service.senders() == ()
    finally:
        svc.close()


def test_latest_frame_wins_per_sender_and_a_replaced_request_is_answered():
    svc = _Service()
    try:
        svc.send("esp1", _jpeg(), reply="p/esp1/reply/r", corr=b"old")
        assert _wait(lambda: svc.slots.depth("esp1") == 1)
        svc.send("esp1", _jpeg(), reply="p/esp1/reply/r", corr=b"new")  # inference took nothing
        assert _wait(lambda: len(svc.replies) == 1)
        assert svc.replies[0][2] == b"old" and svc.replies[0][1]["error"].startswith("dropped:")
        assert svc.cameras["esp1"].counters.snapshot()["dropped"] == 1
        assert svc.slots.take(0.1)[1].correlation == b"new"
    finally:
        svc.close()


def test_a_frame_asking_for_a_reply_outside_its_senders_tree_is_refused_unanswered(caplog):
    """Issue 17 (1, 2): a wildcard or another's topic as the response topic: the frame is
    not inferred, nothing is sent anywhere, it is counted and logged once a minute."""
    svc = _Service()
    try:
        svc.send("esp1", _jpeg())  # a known sender
        assert _wait(lambda: svc.slots.depth("esp1") == 1)
        svc.slots.take(0.1)
        bad = ["a/+/b", "#", "p/esp1/mask", "p/edge/status", "p/cam-a/reply/x", "p/esp1/reply",
               "homeassistant/switch/segedge_edge/paused/config", "p/cam-a/paused/set"]
        for i, topic in enumerate(bad):
            svc.send("esp1", _jpeg(), reply=topic, corr=b"%d" % i)
        svc.send("esp9", _jpeg(), reply="p/esp1/reply/x")  # a new sender, another's tree
        assert _wait(lambda: svc.reply_refused == len(bad) + 1)
        assert _wait(lambda: svc.cameras["esp1"].counters.snapshot()["refused"] == len(bad)
                     and svc.refused == 1)
        time.sleep(0.2)
        assert svc.replies == [] and svc.slots.depth("esp1") == 0  # nothing inferred
        assert "esp9" not in svc.cameras
        lines = [r for r in caplog.records if "frame refused from esp1" in r.getMessage()]
        assert len(lines) == 1 and "p/esp1/reply/" in lines[0].getMessage()
        svc.send("esp1", _jpeg(), reply="p/esp1/reply/ok", corr=b"ok")  # still served
        assert _wait(lambda: svc.slots.depth("esp1") == 1)
        assert svc.slots.take(0.1)[1].reply_to == "p/esp1/reply/ok"
    finally:
        svc.close()


def test_a_file_read_not_in_realtime_never_reads_ahead_of_inference(tmp_path):
    from edge_agent.sources.capture import Capture

    for i in range(6):
        cv2.imwrite(str(tmp_path / f"{i:02d}.png"), np.full((8, 8, 3), i * 30, np.uint8))
    slots, stop, seen = FrameSlots(), threading.Event(), []
    cap = Capture(SourceConfig(uri=str(tmp_path), fps=1000.0, realtime=False, loop=False),
                  slots.slot("dir"), stop, on_state=lambda r: None, on_frame=seen.append)
    cap.start()
    try:
        assert _wait(lambda: len(seen) == 1)
        time.sleep(0.3)
        assert seen == [False]  # nobody took frame 1: the reader waits, drops nothing
        ids = []
        for _ in range(6):
            taken = slots.take(2.0)
            ids.append(taken[1].frame_id)
        assert ids == [1, 2, 3, 4, 5, 6] and not any(seen)  # every frame, in order
    finally:
        stop.set()
        cap.join(2)


def test_a_camera_shows_offline_while_its_agent_is_offline():
    from edge_agent.client.subscriber import effective_state

    camera = {"state": "online", "agent_id": "edge-01"}
    assert effective_state(camera, {"state": "online"}) == "online"
    assert effective_state(camera, {"state": "degraded"}) == "online"
    assert effective_state(camera, {"state": "offline", "reason": "connection lost"}) == "offline"
    assert effective_state(camera, None) == "online"  # the agent's status not seen yet
    assert effective_state({"state": "degraded"}, {"state": "offline"}) == "degraded"  # single


def test_the_registry_hands_out_maps_that_never_change_under_a_reader(base, tmp_path):
    """Readers iterate a snapshot while a sender appears or goes: copy on write."""
    from edge_agent.cameras import CameraRegistry

    cfg, _ = load(_write(tmp_path, base), {})
    registry = CameraRegistry()
    a, b = (Camera(c, Outputs(mask=lambda text: True)) for c in cfg.cameras)
    registry.add(a)
    before = registry.snapshot()
    registry.add(b)
    assert list(before) == ["a"] and list(registry) == ["a", "b"] and len(registry) == 2
    assert registry.remove("a") is a and "a" not in registry and registry.get("b") is b
    assert list(before) == ["a"] and registry.remove("nobody") is None
