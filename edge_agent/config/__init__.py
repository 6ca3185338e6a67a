"""Typed agent configuration: one TOML file, every key overridable from the environment.

``SEGEDGE_<SECTION>_<KEY>`` overrides ``[section] key``; ``SEGEDGE_<KEY>`` overrides a
top-level key. Everything is checked at start; a problem raises ConfigError naming
the key, and the CLI turns it into exit code 78 (EX_CONFIG). See docs/config.md.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import logging
import math
import os
import re
import reprlib
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple
from urllib.parse import urlparse

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on the Python 3.9 lane
    import tomli as tomllib

from edge_agent.bundle.manifest import TARGETS
from edge_agent.protocol.messages import MASK_ENCODINGS

DEFAULT_PATH = "/etc/segedge/agent.toml"
ENV_PREFIX = "SEGEDGE_"
ENV_IGNORED = {"SEGEDGE_CONFIG"}
NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
PRECISIONS = ("", "f32", "bf16", "f16")
VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")  # refused: they hide fallbacks
DEVICE_NAME = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)?\Z")  # CPU, GPU.0, NPU; no spaces
# Keys holding a path: a relative one in the file is relative to the file's folder
# (source.uri and cameras[].uri too, when they name a file or folder).
PATH_KEYS = ("health_file", "model.bundle", "model.cache_dir", "model.server_ca",
             "mqtt.password_file",
             "mqtt.tls_ca", "mqtt.tls_cert", "mqtt.tls_key", "commands.state_file")


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
    num_requests: int = _f(0, "parallel infer requests (0 = the device's "
                              "`OPTIMAL_NUMBER_OF_INFER_REQUESTS` under the THROUGHPUT hint)",
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


def metrics_address(listen: str) -> Tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as (host, port); ValueError when it is not one."""
    host, sep, port = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 \
            or any(c in host for c in "/ []"):
        raise ValueError(listen)
    return host, int(port)


CAMERA_SOURCE_KEYS = ("uri", "loop", "fps", "realtime", "stall_timeout_s", "reconnect_max_s")
CAMERA_OUTPUT_KEYS = ("max_publish_fps", "frame_every", "mask_encoding", "overlay_interval_s")
MAX_CAMERAS = 64


@dataclass
class CameraConfig:
    """One camera of the agent: its id (topics), source and publish settings.

    In a ``[[cameras]]`` table every key but ``id`` and ``uri`` defaults to the value in
    ``[source]`` or ``[output]``. A config without ``[[cameras]]`` has one camera whose id
    is ``device_id`` and whose source is ``[source]`` (the single-camera form).
    """

    id: str
    source: SourceConfig
    max_publish_fps: float
    frame_every: int
    mask_encoding: str
    overlay_interval_s: float
    sender: bool = False  # made at run time for a frames_in sender (not configured)

    @classmethod
    def from_sections(cls, camera_id: str, source: SourceConfig, out: OutputConfig,
                      sender: bool = False) -> CameraConfig:
        """A camera reading ``source`` (kept as given) with ``[output]``'s settings."""
        return cls(camera_id, source, out.max_publish_fps, out.frame_every,
                   out.mask_encoding, out.overlay_interval_s, sender)


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
    # filled by load(): the [[cameras]] tables, or the one camera of the single-camera form
    cameras: List[CameraConfig] = field(default_factory=list)

    @property
    def multi_camera(self) -> bool:
        """The agent's id is not its only camera's: it publishes a status of its own."""
        return [c.id for c in self.cameras] != [self.device_id] or self.frames_in.enabled


SECTIONS = {"source": SourceConfig, "model": ModelConfig, "output": OutputConfig,
            "mqtt": MqttConfig, "homeassistant": HomeAssistantConfig,
            "commands": CommandsConfig, "frames_in": FramesInConfig,
            "metrics": MetricsConfig}
TABLE_LISTS = ("cameras",)  # top-level arrays of tables, not plain keys


SECRETS = {"mqtt.password"}  # never echoed in an error
MAX_CONFIG_BYTES = 1 << 20  # a real agent.toml is < 2 KB; refuse before parsing
MAX_STRING = 4096  # longest value any string key may hold (paths, URLs, names)
MAX_PASSWORD_BYTES = 4096
log = logging.getLogger("segedge.config")


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


def _coerce_toml(key: str, tp: Any, value: Any) -> Any:
    ok = {
        str: isinstance(value, str),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        bool: isinstance(value, bool),
        list: isinstance(value, list) and all(isinstance(v, str) for v in value),
    }[tp]
    if not ok:
        raise ConfigError(f"{key}: expected {_type_name(tp)}{_shown(key, value)}")
    if tp is float:
        try:
            return float(value)
        except OverflowError:  # an integer too large for a float
            raise ConfigError(f"{key}: number out of range, got {_short(value)}") from None
    return value


def _coerce_env(key: str, env: str, tp: Any, raw: str) -> Any:
    where = f"{key} (from {env})"
    try:
        if tp is str:
            return raw
        if tp is int:
            return int(raw.strip())
        if tp is float:
            return float(raw.strip())
        if tp is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        text = raw.strip()
        if text.startswith("["):
            value = json.loads(text)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(raw)
            return value
        return [p.strip() for p in text.split(",") if p.strip()]
    except (ValueError, RecursionError):
        raise ConfigError(f"{where}: expected {_type_name(tp)}{_shown(key, raw)}") from None


def _apply(obj: Any, cls: type, data: Mapping[str, Any], prefix: str) -> None:
    known = {f.name for f in fields(cls)} - set(SECTIONS if cls is Config else ()) \
        - set(TABLE_LISTS if cls is Config else ())
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in known and cls is Config:
            _unknown_top_level(str(key), value, known)
        if key not in known:
            raise ConfigError(f"{_key(full)}: unknown key (known: {', '.join(sorted(known))})")
        setattr(obj, key, _coerce_toml(full, _field_type(cls, key), value))


def _unknown_top_level(key: str, value: Any, keys: Any) -> None:
    """A top-level name that is neither a key nor a section: name both, and the likely one."""
    sections = sorted(SECTIONS) + [f"[[{t}]]" for t in TABLE_LISTS]
    table = isinstance(value, (dict, list)) and not isinstance(value, str)
    close = difflib.get_close_matches(key, list(SECTIONS) + list(TABLE_LISTS) + list(keys), 1)
    hint = ""
    if close:
        hint = f"; did you mean {'[' + close[0] + ']' if close[0] in SECTIONS else close[0]}?"
    what = f"[{_key(key)}]: unknown section" if table else f"{_key(key)}: unknown key"
    raise ConfigError(f"{what} (sections: {', '.join(sections)}; top-level keys: "
                      f"{', '.join(sorted(keys))}){hint}")


def _section_of(cls: type) -> str:
    return next(s for s, c in SECTIONS.items() if c is cls)


def _env_overrides(cfg: Config, environ: Mapping[str, str]) -> List[str]:
    """Apply SEGEDGE_* variables; return the names of those that matched nothing."""
    targets: Dict[str, Tuple[Any, type, str]] = {}
    for f in fields(Config):
        if f.name not in SECTIONS and f.name not in TABLE_LISTS:
            targets[f"{ENV_PREFIX}{f.name.upper()}"] = (cfg, Config, f.name)
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            env = f"{ENV_PREFIX}{section.upper()}_{f.name.upper()}"
            targets[env] = (getattr(cfg, section), cls, f.name)
    unknown = []
    for env, raw in environ.items():
        if not env.startswith(ENV_PREFIX) or env in ENV_IGNORED:
            continue
        if env not in targets:
            section = env[len(ENV_PREFIX):].split("_", 1)[0].lower()
            if section in SECTIONS:
                name = env[len(ENV_PREFIX) + len(section) + 1:].lower()
                raise ConfigError(f"{_key(env)}: unknown key '{_key(section + '.' + name)}'")
            unknown.append(env)
            continue
        obj, cls, name = targets[env]
        key = name if cls is Config else f"{_section_of(cls)}.{name}"
        setattr(obj, name, _coerce_env(key, env, _field_type(cls, name), raw))
    return unknown


def _file_relative(value: str, base: Path) -> str:
    """A relative path made relative to ``base``; other values (absolute paths, URLs,
    camera indices, /dev/videoN, "") as they are."""
    if not value or os.path.isabs(value) or "://" in value or value.isdigit() \
            or "\0" in value:
        return value
    return str(base / value)


def _resolve_paths(cfg: Config, base: Path) -> None:
    """The file's relative paths against its folder (run before the environment's values,
    which stay relative to the working directory)."""
    for key in PATH_KEYS:
        section, _, name = key.rpartition(".")
        obj = getattr(cfg, section) if section else cfg
        setattr(obj, name, _file_relative(getattr(obj, name), base))
    cfg.source.uri = _file_relative(cfg.source.uri, base)


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {message}")


def _is(path: str, kind: str) -> bool:
    """Path.is_dir/is_file that answers False for names the OS refuses (too long, NUL)."""
    try:
        return Path(path).is_dir() if kind == "dir" else Path(path).is_file()
    except (OSError, ValueError):
        return False


def source_kind(uri: str) -> str:
    """device | network | file | dir (or 'missing' for a path that does not exist)."""
    if uri.isdigit() or uri.startswith("/dev/video"):
        return "device"
    if "://" in uri:
        return "network"
    if _is(uri, "dir"):
        return "dir"
    return "file" if _is(uri, "file") else "missing"


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


def _check_value(key: str, f: Any, value: Any) -> None:
    """One key's value: a number finite and inside its documented range, strings sane."""
    rng = f.metadata.get("range")
    if rng is not None:
        lo, hi, above = rng
        fine = math.isfinite(value) and (value > lo if above else value >= lo) \
            and value <= hi
        _check(fine, key, f"must be {_range_text(rng, f.type == 'int')}, got {_short(value)}")
    texts = value if isinstance(value, list) else [value] if isinstance(value, str) else []
    for text in texts:
        shown = "" if key in SECRETS else f": {_short(text)}"
        _check(len(text) <= MAX_STRING, key, f"longer than {MAX_STRING} characters")
        _check("\0" not in text, key, f"contains a NUL character{shown}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f"{key}: not valid UTF-8{shown}") from None


def _check_values(cfg: Config) -> None:
    """Every key of every section (the cameras' in _check_camera_values)."""
    for key, _cls, f in _keys():
        _check_value(key, f, _value(cfg, key))


def _check_uri(uri: str, key: str = "source.uri") -> None:
    try:
        url = urlparse(uri)
        _check(url.scheme in NETWORK_SCHEMES, key,
               f"bad URL {_short(uri)}: scheme must be one of {', '.join(NETWORK_SCHEMES)}")
        _check(bool(url.hostname), key, f"bad URL {_short(uri)}: no host")
        url.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:  # "Invalid IPv6 URL", port out of range, ...
        raise ConfigError(f"{key}: bad URL {_short(uri)}: invalid port or address ({exc})"
                          ) from None


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


def _camera_key(cfg: Config, camera: CameraConfig, key: str) -> str:
    """``source.uri`` in the single-camera form (its source is ``[source]``),
    ``cameras[2].uri`` otherwise."""
    if camera.source is cfg.source:
        return f"{'source' if key in CAMERA_SOURCE_KEYS else 'output'}.{key}"
    return f"cameras[{cfg.cameras.index(camera) + 1}].{key}"


def _check_camera(cfg: Config, camera: CameraConfig) -> None:
    src = camera.source
    key = _camera_key(cfg, camera, "uri")
    _check(bool(src.uri), key, "must not be empty")
    kind = source_kind(src.uri)
    if kind == "network":
        _check_uri(src.uri, key)
    _check(kind != "missing", key, f"no such file or directory: {_short(src.uri)}")
    _check(camera.mask_encoding in MASK_ENCODINGS, _camera_key(cfg, camera, "mask_encoding"),
           f"must be {' or '.join(MASK_ENCODINGS)}, got {_short(camera.mask_encoding)}")


def _check_frames_in(cfg: Config) -> None:
    f = cfg.frames_in
    if f.topic:
        levels = f.topic.split("/")
        _check(levels.count("+") == 1 and "#" not in f.topic
               and all(level == "+" or "+" not in level for level in levels)
               and all(levels) and "\0" not in f.topic, "frames_in.topic",
               f"must be a topic filter with exactly one '+' level (the sender id) and no "
               f"'#', got {_short(f.topic)}")
    for sender in f.senders:
        _check(valid_id(sender), "frames_in.senders", id_problem(sender))
        _check(sender not in {c.id for c in cfg.cameras} and sender != cfg.device_id,
               "frames_in.senders", f"{_short(sender)} is already a camera or the device id")
    _check(len(set(f.senders)) == len(f.senders), "frames_in.senders", "lists an id twice")


def frames_in_topic(cfg: Config) -> str:
    """The subscription of ``[frames_in]``: one '+' level, the sender id."""
    return cfg.frames_in.topic or f"{cfg.mqtt.prefix}/{cfg.device_id}/frames_in/+"


def _cameras_from(cfg: Config, tables: Any) -> List[CameraConfig]:
    """The ``[[cameras]]`` tables over the [source]/[output] defaults."""
    _check(isinstance(tables, list) and all(isinstance(t, dict) for t in tables), "cameras",
           "must be an array of tables ([[cameras]])")
    _check(len(tables) <= MAX_CAMERAS, "cameras", f"more than {MAX_CAMERAS} cameras")
    known = ("id",) + CAMERA_SOURCE_KEYS + CAMERA_OUTPUT_KEYS
    cameras: List[CameraConfig] = []
    for n, table in enumerate(tables, 1):
        where = f"cameras[{n}]"
        for required in ("id", "uri"):
            _check(required in table, f"{where}.{required}", "missing")
        for key, value in table.items():
            _check(key in known, f"{where}.{_key(str(key))}",
                   f"unknown key (known: {', '.join(sorted(known))})")
            if key == "id":
                _check(isinstance(value, str), f"{where}.id",
                       f"expected a string{_shown('', value)}")
        camera_id = table["id"]
        _check(valid_id(camera_id), f"{where}.id", id_problem(camera_id))
        _check(camera_id not in {c.id for c in cameras}, f"{where}.id",
               f"{_short(camera_id)} is used by an earlier camera")
        camera = CameraConfig.from_sections(camera_id, replace(cfg.source), cfg.output)
        for key, value in table.items():
            if key in CAMERA_SOURCE_KEYS:
                setattr(camera.source, key,
                        _coerce_toml(f"{where}.{key}", _field_type(SourceConfig, key), value))
            elif key in CAMERA_OUTPUT_KEYS:
                setattr(camera, key,
                        _coerce_toml(f"{where}.{key}", _field_type(OutputConfig, key), value))
        cameras.append(camera)
    if len(cameras) > 1:
        for n, camera in enumerate(cameras, 1):
            _check(camera.id != cfg.device_id, f"cameras[{n}].id",
                   f"{_short(camera.id)} is the device_id: with several cameras the agent "
                   f"needs an id of its own")
    return cameras


def _check_camera_values(cfg: Config) -> None:
    """Each camera's values, by the rules of the [source]/[output] keys they mirror."""
    for camera in cfg.cameras:
        for key in CAMERA_SOURCE_KEYS + CAMERA_OUTPUT_KEYS:
            cls = SourceConfig if key in CAMERA_SOURCE_KEYS else OutputConfig
            f = next(x for x in fields(cls) if x.name == key)
            value = getattr(camera.source if cls is SourceConfig else camera, key)
            _check_value(_camera_key(cfg, camera, key), f, value)


def _check_server(cfg: Config) -> None:
    """``[model] server``: a KServe v2 REST endpoint (edge_agent.inference.remote)."""
    from urllib.parse import urlsplit

    m = cfg.model
    url = urlsplit(m.server)
    _check(url.scheme in ("http", "https"), "model.server",
           f"must be http://host:port or https://host:port (the server's KServe v2 REST "
           f"port; gRPC is not spoken by this agent), got {_short(m.server)}")
    try:
        port = url.port
    except ValueError:
        port = -1
    _check(bool(url.hostname) and port != -1 and not url.query and not url.fragment,
           "model.server", f"must be http(s)://host[:port][/path], got {_short(m.server)}")
    _check(url.username is None, "model.server",
           "must not hold credentials (it is shown in status and stats)")
    _check(not m.server_ca or url.scheme == "https", "model.server_ca",
           "is for an https:// server")
    _check(not m.server_ca or _is(m.server_ca, "file"), "model.server_ca",
           f"no such file: {_short(m.server_ca)}")
    _check(cfg.output.mask_resolution == "model", "output.mask_resolution",
           "must be model with [model] server (the server returns the class map at model "
           "size)")


def validate(cfg: Config) -> None:
    _check_values(cfg)
    _check_camera_values(cfg)
    _check(valid_id(cfg.device_id), "device_id", id_problem(cfg.device_id))
    _check(cfg.log_level.upper() in LOG_LEVELS, "log_level",
           f"must be one of {', '.join(LOG_LEVELS)}, got {_short(cfg.log_level)}")
    cfg.log_level = cfg.log_level.upper()
    for camera in cfg.cameras:
        _check_camera(cfg, camera)
    _check_frames_in(cfg)
    m = cfg.model
    _check(m.target in TARGETS, "model.target",
           f"must be one of {', '.join(TARGETS)}, got {_short(m.target)}")
    _check(bool(m.devices) and len(m.devices) <= 16 and all(d.strip() for d in m.devices),
           "model.devices", "must list 1 to 16 OpenVINO devices, e.g. [\"CPU\"]")
    m.devices = [d.strip().upper() for d in m.devices]
    _check(not any(d.startswith(VIRTUAL_DEVICES) for d in m.devices),
           "model.devices", "list real devices; AUTO/MULTI/HETERO/BATCH hide fallbacks")
    for d in m.devices:
        _check(bool(DEVICE_NAME.match(d)), "model.devices",
               f"{_short(d)} is not an OpenVINO device name (CPU, GPU, GPU.1, NPU, ...)")
    _check(m.inference_precision in PRECISIONS, "model.inference_precision",
           f"must be one of {PRECISIONS}, got {_short(m.inference_precision)}")
    _check(_is(m.bundle, "dir"), "model.bundle", f"no such directory: {_short(m.bundle)}")
    if m.server:
        _check_server(cfg)
    o = cfg.output
    _check(o.mask_encoding in MASK_ENCODINGS, "output.mask_encoding",
           f"must be {' or '.join(MASK_ENCODINGS)}, got {_short(o.mask_encoding)}")
    _check(o.mask_resolution in ("model", "frame"), "output.mask_resolution",
           f"must be model or frame, got {_short(o.mask_resolution)}")
    q = cfg.mqtt
    _check(bool(q.host) and len(q.host) <= 253 and "/" not in q.host and " " not in q.host,
           "mqtt.host", f"must be a host name or address, got {_short(q.host)}")
    _check(bool(q.prefix) and len(q.prefix) <= 256 and not any(c in q.prefix for c in "+#\0")
           and not q.prefix.startswith("/") and not q.prefix.endswith("/"),
           "mqtt.prefix", f"must be non-empty without wildcards or edge '/', got "
                          f"{_short(q.prefix)}")
    _check(len(q.client_id) <= 256, "mqtt.client_id", "longer than 256 characters")
    _check(q.protocol in ("5", "3.1.1"), "mqtt.protocol", f"must be \"5\" or \"3.1.1\", "
                                                          f"got {_short(q.protocol)}")
    for key in ("tls_ca", "tls_cert", "tls_key", "password_file"):
        value = getattr(q, key)
        _check(not value or _is(value, "file"), f"mqtt.{key}", f"no such file: {_short(value)}")
    _check(bool(q.tls_cert) == bool(q.tls_key), "mqtt.tls_cert",
           "tls_cert and tls_key must be set together")
    _check(not q.password or bool(q.username), "mqtt.password", "set mqtt.username too")
    _check(len(q.password.encode("utf-8")) <= MAX_PASSWORD_BYTES, "mqtt.password",
           f"longer than {MAX_PASSWORD_BYTES} bytes")
    ha = cfg.homeassistant
    _check(bool(ha.discovery_prefix) and len(ha.discovery_prefix) <= 256
           and not any(c in ha.discovery_prefix for c in "+#\0 ")
           and not ha.discovery_prefix.startswith("/") and not ha.discovery_prefix.endswith("/"),
           "homeassistant.discovery_prefix", f"must be non-empty without wildcards, spaces or "
                                             f"edge '/', got {_short(ha.discovery_prefix)}")
    if cfg.metrics.listen:
        try:
            metrics_address(cfg.metrics.listen)
        except ValueError:
            raise ConfigError(f"metrics.listen: must be HOST:PORT (e.g. 127.0.0.1:9108), got "
                              f"{_short(cfg.metrics.listen)}") from None
        _check(importlib.util.find_spec("prometheus_client") is not None, "metrics.listen",
               "needs prometheus-client: pip install 'segedge[metrics]'")
    c = cfg.commands
    _check(not c.persist or bool(c.state_file or cfg.health_file), "commands.persist",
           "needs commands.state_file (or health_file, beside which commands.json goes)")


def state_file(cfg: Config) -> str:
    """Where persisted command settings live ("" when not persisted)."""
    if not cfg.commands.persist:
        return ""
    return cfg.commands.state_file or str(Path(cfg.health_file).parent / "commands.json")


def _read_secret(path: Path, key: str, warn: bool) -> str:
    """A password file, bounded; warn when group or others may read it."""
    try:
        with open(path, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            raw = handle.read(MAX_PASSWORD_BYTES + 2)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"{key}: cannot read {_short(str(path))}: {reason}") from None
    if len(raw) > MAX_PASSWORD_BYTES + 1:
        raise ConfigError(f"{key}: longer than {MAX_PASSWORD_BYTES} bytes")
    if warn and mode & 0o077:
        log.warning("%s %s is readable by group or others (mode %04o): chmod 600 it",
                    key, path, mode & 0o7777)
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: not UTF-8 text") from None


def _resolve_password(q: MqttConfig, environ: Mapping[str, str]) -> None:
    if q.password_file:
        if not _is(q.password_file, "file"):
            raise ConfigError(f"mqtt.password_file: no such file: {_short(q.password_file)}")
        q.password = _read_secret(Path(q.password_file), "mqtt.password_file", warn=True)
    elif not q.password and environ.get("CREDENTIALS_DIRECTORY"):
        cred = Path(environ["CREDENTIALS_DIRECTORY"]) / "mqtt_password"
        if _is(str(cred), "file"):  # systemd makes credentials private to the unit
            q.password = _read_secret(cred, "mqtt password credential", warn=False)


def _read_toml(path: str) -> Dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file {_short(path, 200)}: not found") from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"config file {_short(path, 200)}: {reason}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {_short(path, 200)}: larger than {MAX_CONFIG_BYTES} "
                          f"bytes")
    where = f"config file {_short(path, 200)}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except RecursionError:
        line = _line_of(text, r"[\[{]{100}")
        raise ConfigError(f"{where}: {line}invalid TOML: nested too deep") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: invalid TOML: {exc}") from None
    except ValueError:  # an integer with more digits than Python converts
        line = _line_of(text, r"[0-9_]{1000}")
        raise ConfigError(f"{where}: {line}number too long") from None


def _line_of(text: str, pattern: str) -> str:
    """'line N: key: ' for the first line matching ``pattern`` (the parser does not say)."""
    for number, line in enumerate(text.splitlines(), 1):
        if re.search(pattern, line):
            key = line.split("=", 1)[0].strip() if "=" in line else ""
            return f"line {number}: {_key(key) + ': ' if key else ''}"
    return ""


def load(path: Optional[str],
         environ: Optional[Mapping[str, str]] = None) -> Tuple[Config, List[str]]:
    """Read, override from env, validate. Returns the config and ignored env names.

    Raises ConfigError and nothing else, whatever the file and the environment hold.
    """
    environ = os.environ if environ is None else environ
    try:
        return _load(path, environ)
    except ConfigError:
        raise
    except RecursionError:
        raise ConfigError("config: a value is nested too deep") from None
    except Exception as exc:  # noqa: BLE001 - a last guard: one line, exit 78, no traceback
        raise ConfigError(f"config: unusable value ({type(exc).__name__}: "
                          f"{_short(str(exc), 200)})") from None


def _load(path: Optional[str], environ: Mapping[str, str]) -> Tuple[Config, List[str]]:
    cfg = Config()
    data: Dict[str, Any] = {}
    if path:
        data = _read_toml(path)
        top = {k: v for k, v in data.items() if k not in SECTIONS and k not in TABLE_LISTS}
        _apply(cfg, Config, top, "")
        for section, cls in SECTIONS.items():
            if section in data:
                _check(isinstance(data[section], dict), section, "must be a [table]")
                _apply(getattr(cfg, section), cls, data[section], f"{section}.")
        _resolve_paths(cfg, Path(os.path.abspath(path)).parent)
    ignored = _env_overrides(cfg, environ)
    _resolve_password(cfg.mqtt, environ)
    if "cameras" in data:
        uri_set = "uri" in data.get("source", {}) or f"{ENV_PREFIX}SOURCE_URI" in environ
        _check(not uri_set, "source.uri", "set either [source] uri (one camera) or "
                                          "[[cameras]], not both")
        cfg.cameras = _cameras_from(cfg, data["cameras"])
        base = Path(os.path.abspath(str(path))).parent
        for camera in cfg.cameras:  # the file's own uri values (its [source] one is done)
            camera.source.uri = _file_relative(camera.source.uri, base)
    else:
        cfg.cameras = [CameraConfig.from_sections(cfg.device_id, cfg.source, cfg.output)]
    validate(cfg)
    _check(bool(cfg.cameras) or cfg.frames_in.enabled, "cameras",
           "no camera and frames_in is off: nothing to do (list [[cameras]], or set "
           "[frames_in] enabled = true)")
    return cfg, ignored


def describe() -> List[Tuple[str, str, Any, str]]:
    """(key, type, default, help) for every key: the docs' key table is made from these."""
    return [(key, f.type, getattr(cls(), f.name), f.metadata["help"])
            for key, cls, f in _keys()]


def key_table() -> str:
    """The Markdown key table of docs/config.md (a test keeps the two equal)."""
    types = {"List[str]": "list"}
    lines = ["| key | type | default | range | meaning |", "|---|---|---|---|---|"]
    for key, _cls, f in _keys():
        default = json.dumps(getattr(_cls(), f.name))
        rng = f.metadata.get("range")
        lines.append(f"| `{key}` | {types.get(f.type, f.type)} | `{default}` | "
                     f"{_range_text(rng, f.type == 'int') if rng else ''} | {f.metadata['help']} |")
    lines.append("| `cameras[].id` | str | (required) |  | the camera's id in topics "
                 "(`<prefix>/<id>/...`): unique, not the `device_id` unless it is the only "
                 "camera; no `/`, `+`, `#`, spaces |")
    for key in CAMERA_SOURCE_KEYS + CAMERA_OUTPUT_KEYS:
        section = "source" if key in CAMERA_SOURCE_KEYS else "output"
        cls = SourceConfig if section == "source" else OutputConfig
        f = next(x for x in fields(cls) if x.name == key)
        default = "(required)" if key == "uri" else f"`{section}.{key}`"
        lines.append(f"| `cameras[].{key}` | {types.get(f.type, f.type)} | {default} |  | as "
                     f"`{section}.{key}`, for this camera |")
    return "\n".join(lines) + "\n"
