"""The agent's configuration as typed dataclasses: every key with its default, help and
range (``_f``), the sections, limits and the id rule. Pure; no I/O."""

from __future__ import annotations

import re
import reprlib
from dataclasses import dataclass, field, fields, replace
from typing import Any, Iterator, List, Optional, Tuple

DEFAULT_PATH = "/etc/segedge/agent.toml"


ENV_PREFIX = "SEGEDGE_"


ENV_IGNORED = {"SEGEDGE_CONFIG"}


NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


PRECISIONS = ("", "f32", "bf16", "f16")


PERFORMANCE_HINTS = ("auto", "throughput", "latency")


VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")  # refused: they hide fallbacks


DEVICE_NAME = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)?\Z")  # CPU, GPU.0, NPU; no spaces


# Keys holding a path: a relative one in the file is relative to the file's folder
# (source.uri and cameras[].uri too, when they name a file or folder).
PATH_KEYS = ("health_file", "model.bundle", "model.cache_dir", "model.server_ca",
             "mqtt.password_file",
             "mqtt.tls_ca", "mqtt.tls_cert", "mqtt.tls_key", "commands.state_file",
             "samples.dir")


class ConfigError(Exception):
    """A configuration problem; ``str()`` is one line that names the key."""

    def __init__(self, message: str) -> None:
        text = " ".join(str(message).split())  # one line, whatever a value held
        super().__init__(text if len(text) <= 500 else text[:497] + "...")


def _f(default: Any, help_: str, lo: Optional[float] = None, hi: Optional[float] = None,
       above: bool = False) -> Any:
    """A key with its docs help and, for numbers, its range ``lo..hi`` (``above``: > lo)."""
    meta = {"help": help_, "range": (lo, hi, above) if hi is not None else None}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class SourceConfig:
    uri: str = _f("/dev/video0", "V4L2 index (`\"0\"`) or `/dev/videoN`, `rtsp://` or "
                                 "`http(s)://` URL, a video file, or a directory of images")
    loop: bool = _f(True, "files/dirs: start again at the end (false: the agent stops with "
                          "exit 0)")
    fps: float = _f(0.0, "files/dirs: read at this rate (0 = the file's own fps; 10 for dirs)",
                    0, 1000)
    realtime: bool = _f(True, "files/dirs: true = play at `fps` like a live camera (frames "
                              "inference has not taken are replaced, counted as dropped); "
                              "false = never read ahead of inference: every frame is "
                              "inferred, `fps` is an upper bound (batch runs, benchmarks)")
    stall_timeout_s: float = _f(10.0, "no frame for this long = stalled: status `degraded`, "
                                      "network streams reconnect (also the OpenCV open/read "
                                      "timeout). 0 = never, for cameras that send rarely",
                                0, 86400)
    reconnect_max_s: float = _f(30.0, "cap of the exponential reconnect backoff (starts at "
                                      "0.5 s, doubles, jitter between half and all of it)",
                                0, 3600, above=True)


@dataclass
class ModelConfig:
    bundle: str = _f("/opt/segedge/models/current", "bundle version dir with `manifest.json`")
    target: str = _f("cpu", "bundle target: cpu, gpu, npu, myriad")
    devices: List[str] = _f(["CPU"], "OpenVINO devices tried in order, e.g. "
                                     "`[\"NPU\",\"GPU\",\"CPU\"]`; names OpenVINO does not "
                                     "know are refused, and AUTO/MULTI/HETERO/BATCH (they "
                                     "hide fallbacks)")
    performance_hint: str = _f("auto", "OpenVINO `PERFORMANCE_HINT`: `throughput` (parallel "
                                       "streams: the most frames per second), `latency` (one "
                                       "stream on every core: the soonest mask per frame) or "
                                       "`auto` (CPU: both compiled, latency while the frames "
                                       "leave it room, throughput when not; other devices: "
                                       "throughput)")
    num_requests: int = _f(0, "parallel infer requests (0 = the device's "
                              "`OPTIMAL_NUMBER_OF_INFER_REQUESTS` under the hint)",
                           0, 64)
    cache_dir: str = _f("", "OpenVINO `CACHE_DIR` for compiled models (`\"\"` = none); use a "
                            "`StateDirectory=` path")
    inference_precision: str = _f("", "`\"\"` = device default (bf16 on CPUs with "
                                      "AMX/AVX512-BF16), or f32, bf16, f16")
    server: str = _f("", "`\"\"` = run the model here; `http://host:port` or `https://…`: "
                         "a KServe v2 / Open Inference Protocol server (OVMS, Triton) runs "
                         "it (docs/agent.md, \"Inference on a server\")")
    server_model: str = _f("", "model name on the server (`\"\"` = the bundle's name)")
    server_timeout_s: float = _f(2.0, "seconds one request to the server may take, connect "
                                      "to last byte", 0.05, 6.0, above=True)
    server_requests: int = _f(2, "requests to the server in flight at most", 1, 16)
    server_ca: str = _f("", "CA file for an `https://` server (`\"\"` = the system's)")


@dataclass
class OutputConfig:
    mask_encoding: str = _f("png", "`png` (base64 single-channel PNG of class indices) or `rle` "
                                   "(COCO-style)")
    mask_resolution: str = _f("model", "`model` (network size) or `frame` (source frame size: "
                                       "logits upsampled bilinearly, then the class decision)")
    max_publish_fps: float = _f(10.0, "mask publish rate limit, independent of inference fps "
                                      "(0 = unlimited)", 0, 1000)
    stats_interval_s: float = _f(5.0, "seconds between stats messages", 0, 3600, above=True)
    frame_every: int = _f(0, "also publish the source frame (JPEG) on `<prefix>/<id>/frame` "
                             "before every Nth mask, for overlays (0 = never)", 0, 100000)
    overlay_interval_s: float = _f(0.0, "publish a JPEG overlay (frame, mask, legend) on "
                                        "`<prefix>/<id>/overlay` at most this often, QoS 0, "
                                        "not retained; Home Assistant's image entity (0 = off)",
                                   0, 86400)


@dataclass
class MqttConfig:
    host: str = _f("127.0.0.1", "broker host")
    port: int = _f(1883, "broker port", 1, 65535)
    prefix: str = _f("segedge", "topic prefix")
    client_id: str = _f("", "`\"\"` = `segedge-<device_id>`")
    protocol: str = _f("5", "`\"5\"` or `\"3.1.1\"`")
    qos_mask: int = _f(0, "QoS of mask messages; status and stats are always QoS 1", 0, 2)
    keepalive_s: int = _f(30, "MQTT keepalive; the broker publishes the last will after 1.5x "
                              "this on a silent loss", 5, 65535)
    username: str = _f("", "user name (`\"\"` = anonymous)")
    password: str = _f("", "password (prefer `password_file` or `$CREDENTIALS_DIRECTORY`); "
                           "never shown in errors")
    password_file: str = _f("", "file holding the password (warned about when group or others "
                                "can read it)")
    tls_ca: str = _f("", "CA certificate file; setting it (or a client cert) turns TLS on")
    tls_cert: str = _f("", "client certificate file (mutual TLS); needs `tls_key`")
    tls_key: str = _f("", "client key file (mutual TLS)")


@dataclass
class HomeAssistantConfig:
    enabled: bool = _f(False, "publish Home Assistant MQTT discovery (retained) on every "
                              "connect; false publishes the same topics empty, which removes "
                              "the entities (docs/integrations.md)")
    discovery_prefix: str = _f("homeassistant", "Home Assistant's discovery prefix (no `+`, "
                                                "`#`, spaces)")


@dataclass
class CommandsConfig:
    enabled: bool = _f(True, "subscribe to `<prefix>/<id>/+/set` (false: no commands; the "
                             "state topics are still published)")
    rate_per_s: float = _f(5.0, "commands per second on average (a token bucket; beyond it "
                                "commands are dropped unread and counted)", 0, 1000, above=True)
    burst: int = _f(10, "commands accepted at once by the token bucket", 1, 1000)
    persist: bool = _f(False, "keep commanded settings across restarts (false: a restart "
                              "comes back to this file's values)")
    state_file: str = _f("", "where persisted settings live (`\"\"` = `commands.json` beside "
                             "`health_file`); written atomically, mode 0600")


@dataclass
class FramesInConfig:
    enabled: bool = _f(False, "take frames that other devices publish over MQTT (JPEG/PNG "
                              "bytes, or JSON with a base64 image): each sender is a camera of "
                              "its own (docs/agent.md, \"Frames from other devices\")")
    topic: str = _f("", "topic filter with exactly one `+` level, the sender id (`\"\"` = "
                        "`<prefix>/<device_id>/frames_in/+`)")
    senders: List[str] = _f([], "sender ids allowed (`[]` = any, up to `max_senders`)")
    max_senders: int = _f(16, "senders served at once; frames from more are refused and "
                              "counted", 1, 1000)
    max_bytes: int = _f(4 << 20, "largest frame message accepted (bytes, before decoding)",
                        1024, 64 << 20)
    max_side: int = _f(4096, "largest image width or height accepted (read from the image "
                             "header, before decoding)", 16, 16384)
    max_pixels: int = _f(4096 * 4096, "largest image accepted in pixels (width x height, "
                                      "read from the image header, before decoding); an "
                                      "image that also claims more pixels per byte than a "
                                      "real one can (JPEG 1024, PNG 4096) is refused",
                         256, 16384 * 16384)
    stall_timeout_s: float = _f(30.0, "a sender silent this long: its camera turns "
                                      "`degraded` (0 = never)", 0, 86400)
    forget_after_s: float = _f(600.0, "a sender silent this long is forgotten: its status "
                                      "turns `offline` and its slot frees (0 = never)",
                               0, 604800)


@dataclass
class MetricsConfig:
    listen: str = _f("", "serve Prometheus metrics on `HOST:PORT`, e.g. `\"127.0.0.1:9108\"` "
                         "(`\"\"` = off); needs prometheus-client (the `metrics` extra), "
                         "imported only when set (docs/agent.md, \"Prometheus metrics\")")


@dataclass
class QualityConfig:
    enabled: bool = _f(True, "per-frame confidence figures (in the graph) in each mask, the "
                             "window's in each camera's stats, the retained "
                             "`<prefix>/<id>/quality` topic and drift state (docs/quality.md)")
    confidence_threshold: float = _f(0.9, "a pixel is uncertain when its top-class "
                                          "probability is below this; a bundle whose "
                                          "`reference` names its own threshold uses that one",
                                     0.5, 0.999)
    window_s: float = _f(20.0, "the rolling window: figures of the frames of the last this "
                               "many seconds", 1, 3600)
    window_frames: int = _f(1000, "and at most this many frames (the newest)", 10, 100000)
    min_frames: int = _f(60, "`warming_up` until the window holds this many frames (or "
                             "frames over half of `window_s`, for slow cameras)", 1, 100000)
    drift_enter: float = _f(0.70, "drift score (the window's mean uncertain share as a "
                                  "quantile of the reference's images, 0..1) at or above "
                                  "which a camera turns `drifting`", 0, 1, above=True)
    drift_exit: float = _f(0.66, "score at or below which a `drifting` camera turns `ok` "
                                 "again (below `drift_enter`: the hysteresis)", 0, 1)
    enter_after_s: float = _f(5.0, "the score must stay at or above `drift_enter` this long "
                                   "before `drifting`", 0, 3600)
    exit_after_s: float = _f(10.0, "the score must stay at or below `drift_exit` this long "
                                   "before `ok`", 0, 3600)


@dataclass
class SamplesConfig:
    enabled: bool = _f(False, "save frames for labelling, every camera: those the model is "
                              "unsure of plus a random share, with a pre-label, in the "
                              "Oxford-IIIT Pet layout under `<dir>/<camera_id>/` "
                              "(docs/field-loop.md, \"Samples on the device\"); "
                              "`cameras[].samples.enabled` for one camera")
    dir: str = _f("/var/lib/segedge/samples", "root of the sample folders (a directory, not a "
                                               "symlink; created when missing); the agent "
                                               "writes, and deletes, only its own `segedge-*` "
                                               "files there")
    per_minute: float = _f(2.0, "samples saved per minute at most, per camera, evenly spaced",
                           0, 600, above=True)
    random_share: float = _f(0.1, "share of `per_minute` spent on frames taken at random times "
                                  "whatever their figures (calibration: what the model sees "
                                  "when it is sure)", 0, 1)
    uncertain_above: float = _f(0.3, "a frame is chosen for its uncertainty when at least this "
                                     "share of its pixels is uncertain (the frame's `uncertain` "
                                     "figure: top-class probability under the confidence "
                                     "threshold)", 0, 1)
    max_samples: int = _f(500, "samples kept per camera; a new one past it deletes the oldest "
                               "(counted)", 1, 1000000)
    max_bytes: int = _f(256 << 20, "bytes kept per camera (images, pre-labels, sidecars); a new "
                                   "sample past it deletes the oldest (counted)",
                        1 << 20, 1 << 40)


CAMERA_SOURCE_KEYS = ("uri", "loop", "fps", "realtime", "stall_timeout_s", "reconnect_max_s")


CAMERA_OUTPUT_KEYS = ("max_publish_fps", "frame_every", "mask_encoding", "overlay_interval_s")


# [samples] keys a camera's own ``samples`` table may set (the folder is always
# ``<samples.dir>/<camera_id>``)
CAMERA_SAMPLES_KEYS = ("enabled", "per_minute", "random_share", "uncertain_above",
                       "max_samples", "max_bytes")


MAX_CAMERAS = 64


@dataclass
class CameraConfig:
    """One camera of the agent: its id (topics), source and publish settings.

    In a ``[[cameras]]`` table every key but ``id`` and ``uri`` defaults to the value in
    ``[source]`` or ``[output]``. A config without ``[[cameras]]`` has one camera whose id
    is ``device_id`` and whose source is ``[source]`` (the single-camera form). Its
    ``samples`` are ``[samples]`` with the keys of its own ``samples`` table on top.
    """

    id: str
    source: SourceConfig
    max_publish_fps: float
    frame_every: int
    mask_encoding: str
    overlay_interval_s: float
    sender: bool = False  # made at run time for a frames_in sender (not configured)
    samples: SamplesConfig = field(default_factory=SamplesConfig)

    @classmethod
    def from_sections(cls, camera_id: str, source: SourceConfig, out: OutputConfig,
                      sender: bool = False,
                      samples: Optional[SamplesConfig] = None) -> CameraConfig:
        """A camera reading ``source`` (kept as given) with ``[output]``'s settings (and
        a copy of ``[samples]``, off when not given)."""
        return cls(camera_id, source, out.max_publish_fps, out.frame_every,
                   out.mask_encoding, out.overlay_interval_s, sender,
                   replace(samples) if samples is not None else SamplesConfig())


@dataclass
class Config:
    device_id: str = _f("cam-01", "device id, used in topics (no `/`, `+`, `#`, spaces); with "
                                  "`[[cameras]]`, the agent's own id")
    log_level: str = _f("INFO", "DEBUG, INFO, WARNING, ERROR, CRITICAL")
    health_file: str = _f("", "if set, the JSON health file, written atomically on every state "
                              "change and every stats tick (see docs/agent.md)")
    source: SourceConfig = field(default_factory=SourceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig)
    commands: CommandsConfig = field(default_factory=CommandsConfig)
    frames_in: FramesInConfig = field(default_factory=FramesInConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    # filled by load(): the [[cameras]] tables, or the one camera of the single-camera form
    cameras: List[CameraConfig] = field(default_factory=list)

    @property
    def multi_camera(self) -> bool:
        """The agent's id is not its only camera's: it publishes a status of its own."""
        return [c.id for c in self.cameras] != [self.device_id] or self.frames_in.enabled


SECTIONS = {"source": SourceConfig, "model": ModelConfig, "output": OutputConfig,
            "mqtt": MqttConfig, "homeassistant": HomeAssistantConfig,
            "commands": CommandsConfig, "frames_in": FramesInConfig,
            "metrics": MetricsConfig, "quality": QualityConfig, "samples": SamplesConfig}


TABLE_LISTS = ("cameras",)  # top-level arrays of tables, not plain keys


SECRETS = {"mqtt.password"}  # never echoed in an error


MAX_CONFIG_BYTES = 1 << 20  # a real agent.toml is < 2 KB; refuse before parsing


MAX_STRING = 4096  # longest value any string key may hold (paths, URLs, names)


MAX_PASSWORD_BYTES = 4096


def _short(value: Any, limit: int = 60) -> str:
    """A bounded repr: cheap and flat whatever the value (huge, deeply nested)."""
    shown = reprlib.Repr()
    shown.maxlevel, shown.maxstring, shown.maxlong, shown.maxother = 3, limit, 40, limit
    text = shown.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _key(text: str) -> str:
    """A key as written when it is a plain name, quoted and shortened otherwise."""
    plain = text.replace("_", "").replace(".", "").isalnum() and text.isascii()
    return text if plain and len(text) <= 80 else _short(text)


def _type_name(tp: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}.get(
        tp, "a list of strings")


def _field_type(cls: type, name: str) -> Any:
    ann = {f.name: f.type for f in fields(cls)}[name]
    return {"str": str, "int": int, "float": float, "bool": bool}.get(ann, list)


def _shown(key: str, value: Any) -> str:
    return " (value not shown)" if key in SECRETS else f", got {_short(value)}"


def _keys() -> Iterator[Tuple[str, Any, Any]]:
    """(dotted key, owning object's class, field) for every key."""
    for f in fields(Config):
        if f.name not in SECTIONS and f.name not in TABLE_LISTS:
            yield f.name, Config, f
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            yield f"{section}.{f.name}", cls, f


def _value(cfg: Config, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _range_text(rng: Tuple[float, float, bool], integer: bool) -> str:
    lo, hi, above = rng
    if integer:
        return f"{lo}..{hi}"
    return f"{'>' if above else '>='} {lo} and <= {hi}"


# Device, camera and sender ids: each is a topic level, an ACL entry, a broker identity
# and a file name on the controller, so one rule everywhere (the deploy roles' preflight
# uses this pattern too; tests/rig/test_deploy_static.py checks that they agree).
ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"


ID_RULE = "1..128 characters of [A-Za-z0-9._-] starting with a letter or digit"


_ID = re.compile(ID_PATTERN)


def valid_id(text: Any) -> bool:
    """A device, camera or sender id (ID_RULE)."""
    return isinstance(text, str) and _ID.fullmatch(text) is not None


def id_problem(value: Any) -> str:
    """The one refusal text for a bad id."""
    return f"must be {ID_RULE}, got {_short(value)}"
