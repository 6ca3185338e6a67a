"""Typed agent configuration: one TOML file, every key overridable from the environment.

``SEGEDGE_<SECTION>_<KEY>`` overrides ``[section] key``; ``SEGEDGE_<KEY>`` overrides a
top-level key. Everything is checked at start; a problem raises ConfigError naming
the key, and the CLI turns it into exit code 78 (EX_CONFIG). See docs/config.md.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import urlparse

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on the Python 3.9 lane
    import tomli as tomllib

from .manifest import TARGETS

DEFAULT_PATH = "/etc/segedge/agent.toml"
ENV_PREFIX = "SEGEDGE_"
ENV_IGNORED = {"SEGEDGE_CONFIG"}
NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
PRECISIONS = ("", "f32", "bf16", "f16")


class ConfigError(Exception):
    """A configuration problem; ``str()`` is one line that names the key."""


def _f(default: Any, help_: str) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help_})
    return field(default=default, metadata={"help": help_})


@dataclass
class SourceConfig:
    uri: str = _f("/dev/video0", "V4L2 index or /dev/videoN, rtsp:// or http(s):// URL, "
                                 "video file, or directory of images")
    loop: bool = _f(True, "files/dirs: start again at the end (false: the agent stops)")
    fps: float = _f(0.0, "files/dirs: read at this rate (0 = the file's own fps, 10 for dirs)")
    stall_timeout_s: float = _f(10.0, "no frame for this long = stalled, reconnect (0 = never)")
    reconnect_max_s: float = _f(30.0, "cap of the exponential reconnect backoff")


@dataclass
class ModelConfig:
    bundle: str = _f("/opt/segedge/models/current", "bundle version dir with manifest.json")
    target: str = _f("cpu", "bundle target: cpu|gpu|npu|myriad")
    devices: List[str] = _f(["CPU"], "OpenVINO devices tried in order, e.g. [\"NPU\",\"CPU\"]")
    num_requests: int = _f(0, "parallel infer requests (0 = the device's optimal number)")
    cache_dir: str = _f("", "OpenVINO CACHE_DIR for compiled models (\"\" = none)")
    inference_precision: str = _f("", "\"\" = device default, or f32|bf16|f16")


@dataclass
class OutputConfig:
    mask_encoding: str = _f("png", "png (base64 single-channel PNG) or rle (COCO-style)")
    mask_resolution: str = _f("model", "model (network size) or frame (source frame size)")
    max_publish_fps: float = _f(10.0, "mask publish rate limit (0 = unlimited)")
    stats_interval_s: float = _f(5.0, "seconds between stats messages")
    frame_every: int = _f(0, "also publish the source frame (JPEG) on <prefix>/<id>/frame "
                             "with every Nth mask, for overlays (0 = never)")


@dataclass
class MqttConfig:
    host: str = _f("127.0.0.1", "broker host")
    port: int = _f(1883, "broker port")
    prefix: str = _f("segedge", "topic prefix")
    client_id: str = _f("", "\"\" = segedge-<device_id>")
    protocol: str = _f("5", "\"5\" or \"3.1.1\"")
    qos_mask: int = _f(0, "QoS of mask messages (0, 1 or 2)")
    keepalive_s: int = _f(30, "MQTT keepalive")
    username: str = _f("", "user name (\"\" = anonymous)")
    password: str = _f("", "password (prefer password_file or $CREDENTIALS_DIRECTORY)")
    password_file: str = _f("", "file holding the password")
    tls_ca: str = _f("", "CA certificate file; set to use TLS")
    tls_cert: str = _f("", "client certificate file (mutual TLS)")
    tls_key: str = _f("", "client key file (mutual TLS)")


@dataclass
class Config:
    device_id: str = _f("cam-01", "device id, used in topics")
    log_level: str = _f("INFO", "DEBUG|INFO|WARNING|ERROR|CRITICAL")
    health_file: str = _f("", "if set, JSON health written atomically on changes and ticks")
    source: SourceConfig = field(default_factory=SourceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)


SECTIONS = {"source": SourceConfig, "model": ModelConfig, "output": OutputConfig,
            "mqtt": MqttConfig}


def _type_name(tp: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}.get(
        tp, "a list of strings")


def _field_type(cls: type, name: str) -> Any:
    ann = {f.name: f.type for f in fields(cls)}[name]
    return {"str": str, "int": int, "float": float, "bool": bool}.get(ann, list)


def _coerce_toml(key: str, tp: Any, value: Any) -> Any:
    ok = {
        str: isinstance(value, str),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        bool: isinstance(value, bool),
        list: isinstance(value, list) and all(isinstance(v, str) for v in value),
    }[tp]
    if not ok:
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return float(value) if tp is float else value


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
            import json
            value = json.loads(text)
            if not all(isinstance(v, str) for v in value):
                raise ValueError(raw)
            return value
        return [p.strip() for p in text.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {raw!r}") from None


def _apply(obj: Any, cls: type, data: Mapping[str, Any], prefix: str) -> None:
    known = {f.name for f in fields(cls)} - set(SECTIONS if cls is Config else ())
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"{full}: unknown key (known: {', '.join(sorted(known))})")
        setattr(obj, key, _coerce_toml(full, _field_type(cls, key), value))


def _env_overrides(cfg: Config, environ: Mapping[str, str]) -> List[str]:
    """Apply SEGEDGE_* variables; return the names of those that matched nothing."""
    targets: Dict[str, Tuple[Any, type, str]] = {}
    for f in fields(Config):
        if f.name not in SECTIONS:
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
                raise ConfigError(f"{env}: unknown key '{section}."
                                  f"{env[len(ENV_PREFIX) + len(section) + 1:].lower()}'")
            unknown.append(env)
            continue
        obj, cls, name = targets[env]
        key = name if cls is Config else f"{[s for s, c in SECTIONS.items() if c is cls][0]}.{name}"
        setattr(obj, name, _coerce_env(key, env, _field_type(cls, name), raw))
    return unknown


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {message}")


def source_kind(uri: str) -> str:
    """device | network | file | dir (or 'missing' for a path that does not exist)."""
    if uri.isdigit() or uri.startswith("/dev/video"):
        return "device"
    if "://" in uri:
        return "network"
    path = Path(uri)
    if path.is_dir():
        return "dir"
    return "file" if path.is_file() else "missing"


def validate(cfg: Config) -> None:
    _check(bool(cfg.device_id) and not any(c in cfg.device_id for c in "/+#\0 "),
           "device_id", f"must be non-empty without '/', '+', '#' or spaces, got {cfg.device_id!r}")
    _check(cfg.log_level.upper() in LOG_LEVELS, "log_level",
           f"must be one of {', '.join(LOG_LEVELS)}, got {cfg.log_level!r}")
    cfg.log_level = cfg.log_level.upper()
    src = cfg.source
    _check(bool(src.uri), "source.uri", "must not be empty")
    kind = source_kind(src.uri)
    if kind == "network":
        url = urlparse(src.uri)
        _check(url.scheme in NETWORK_SCHEMES, "source.uri",
               f"bad URL {src.uri!r}: scheme must be one of {', '.join(NETWORK_SCHEMES)}")
        _check(bool(url.hostname), "source.uri", f"bad URL {src.uri!r}: no host")
        try:
            url.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ConfigError(f"source.uri: bad URL {src.uri!r}: invalid port") from None
    _check(kind != "missing", "source.uri", f"no such file or directory: {src.uri!r}")
    _check(src.fps >= 0, "source.fps", f"must be >= 0, got {src.fps}")
    _check(src.stall_timeout_s >= 0, "source.stall_timeout_s", "must be >= 0 (0 = never)")
    _check(src.reconnect_max_s > 0, "source.reconnect_max_s", "must be > 0")
    m = cfg.model
    _check(m.target in TARGETS, "model.target",
           f"must be one of {', '.join(TARGETS)}, got {m.target!r}")
    _check(bool(m.devices) and all(d.strip() for d in m.devices), "model.devices",
           "must list at least one OpenVINO device, e.g. [\"CPU\"]")
    m.devices = [d.strip().upper() for d in m.devices]
    _check(not any(d.startswith(("AUTO", "MULTI", "HETERO")) for d in m.devices),
           "model.devices", "list real devices; AUTO/MULTI/HETERO hide fallbacks")
    _check(m.num_requests >= 0, "model.num_requests", "must be >= 0 (0 = optimal)")
    _check(m.inference_precision in PRECISIONS, "model.inference_precision",
           f"must be one of {PRECISIONS}, got {m.inference_precision!r}")
    _check(Path(m.bundle).is_dir(), "model.bundle", f"no such directory: {m.bundle!r}")
    o = cfg.output
    _check(o.mask_encoding in ("png", "rle"), "output.mask_encoding",
           f"must be png or rle, got {o.mask_encoding!r}")
    _check(o.mask_resolution in ("model", "frame"), "output.mask_resolution",
           f"must be model or frame, got {o.mask_resolution!r}")
    _check(o.max_publish_fps >= 0, "output.max_publish_fps", "must be >= 0 (0 = unlimited)")
    _check(o.stats_interval_s > 0, "output.stats_interval_s", "must be > 0")
    _check(o.frame_every >= 0, "output.frame_every", "must be >= 0 (0 = never)")
    q = cfg.mqtt
    _check(bool(q.host) and "/" not in q.host and " " not in q.host, "mqtt.host",
           f"must be a host name or address, got {q.host!r}")
    _check(0 < q.port < 65536, "mqtt.port", f"must be 1..65535, got {q.port}")
    _check(bool(q.prefix) and not any(c in q.prefix for c in "+#\0")
           and not q.prefix.startswith("/") and not q.prefix.endswith("/"),
           "mqtt.prefix", f"must be non-empty without wildcards or edge '/', got {q.prefix!r}")
    _check(q.protocol in ("5", "3.1.1"), "mqtt.protocol", f"must be \"5\" or \"3.1.1\", "
                                                          f"got {q.protocol!r}")
    _check(q.qos_mask in (0, 1, 2), "mqtt.qos_mask", f"must be 0, 1 or 2, got {q.qos_mask}")
    _check(q.keepalive_s >= 5, "mqtt.keepalive_s", "must be >= 5")
    for key in ("tls_ca", "tls_cert", "tls_key", "password_file"):
        value = getattr(q, key)
        _check(not value or Path(value).is_file(), f"mqtt.{key}", f"no such file: {value!r}")
    _check(bool(q.tls_cert) == bool(q.tls_key), "mqtt.tls_cert",
           "tls_cert and tls_key must be set together")
    _check(not q.password or bool(q.username), "mqtt.password", "set mqtt.username too")


def _resolve_password(q: MqttConfig, environ: Mapping[str, str]) -> None:
    if q.password_file:
        try:
            q.password = Path(q.password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"mqtt.password_file: cannot read: {exc}") from None
    elif not q.password and environ.get("CREDENTIALS_DIRECTORY"):
        cred = Path(environ["CREDENTIALS_DIRECTORY"]) / "mqtt_password"
        if cred.is_file():
            q.password = cred.read_text(encoding="utf-8").rstrip("\r\n")


def load(path: Optional[str],
         environ: Optional[Mapping[str, str]] = None) -> Tuple[Config, List[str]]:
    """Read, override from env, validate. Returns the config and ignored env names."""
    environ = os.environ if environ is None else environ
    cfg = Config()
    if path:
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"config file {path}: not found") from None
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None
        top = {k: v for k, v in data.items() if k not in SECTIONS}
        _apply(cfg, Config, top, "")
        for section, cls in SECTIONS.items():
            if section in data:
                _check(isinstance(data[section], dict), section, "must be a [table]")
                _apply(getattr(cfg, section), cls, data[section], f"{section}.")
    ignored = _env_overrides(cfg, environ)
    _resolve_password(cfg.mqtt, environ)
    validate(cfg)
    return cfg, ignored


def describe() -> List[Tuple[str, str, Any, str]]:
    """(key, type, default, help) for every key: used by docs and tests."""
    rows = []
    for f in fields(Config):
        if f.name in SECTIONS:
            continue
        rows.append((f.name, f.type, getattr(Config(), f.name), f.metadata["help"]))
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            rows.append((f"{section}.{f.name}", f.type, getattr(cls(), f.name),
                         f.metadata["help"]))
    return rows
