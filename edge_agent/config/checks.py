"""Checks of a loaded configuration: values in range, URIs, cameras, frames-in, and the
cross-key rules (``validate``). Pure; a problem raises ConfigError naming the key."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import fields
from pathlib import Path
from typing import Any, Tuple
from urllib.parse import urlparse

from edge_agent.bundle.manifest import TARGETS
from edge_agent.config.settings import (
    CAMERA_OUTPUT_KEYS,
    CAMERA_SAMPLES_KEYS,
    CAMERA_SOURCE_KEYS,
    DEVICE_NAME,
    LOG_LEVELS,
    MAX_PASSWORD_BYTES,
    MAX_STRING,
    NETWORK_SCHEMES,
    PERFORMANCE_HINTS,
    PRECISIONS,
    SECRETS,
    VIRTUAL_DEVICES,
    CameraConfig,
    Config,
    ConfigError,
    OutputConfig,
    QualityConfig,
    SamplesConfig,
    SourceConfig,
    _keys,
    _range_text,
    _short,
    _value,
    id_problem,
    valid_id,
)
from edge_agent.protocol.messages import MASK_ENCODINGS


def metrics_address(listen: str) -> Tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as (host, port); ValueError when it is not one."""
    host, sep, port = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 \
            or any(c in host for c in "/ []"):
        raise ValueError(listen)
    return host, int(port)


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


def _check_camera_values(cfg: Config) -> None:
    """Each camera's values, by the rules of the [source]/[output] keys they mirror."""
    for camera in cfg.cameras:
        for key in CAMERA_SOURCE_KEYS + CAMERA_OUTPUT_KEYS:
            cls = SourceConfig if key in CAMERA_SOURCE_KEYS else OutputConfig
            f = next(x for x in fields(cls) if x.name == key)
            value = getattr(camera.source if cls is SourceConfig else camera, key)
            _check_value(_camera_key(cfg, camera, key), f, value)
        if camera.source is cfg.source:
            continue  # the single-camera form: its samples are [samples], checked above
        for key in CAMERA_SAMPLES_KEYS:
            f = next(x for x in fields(SamplesConfig) if x.name == key)
            _check_value(f"cameras[{cfg.cameras.index(camera) + 1}].samples.{key}", f,
                         getattr(camera.samples, key))


def _check_server(cfg: Config) -> None:
    """``[model] server``: a KServe v2 REST endpoint (edge_agent.inference.remote)."""
    m = cfg.model
    url = urlparse(m.server)
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
    _check(m.performance_hint in PERFORMANCE_HINTS, "model.performance_hint",
           f"must be {' or '.join(PERFORMANCE_HINTS)}, got {_short(m.performance_hint)}")
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
    _check(cfg.quality.drift_exit < cfg.quality.drift_enter, "quality.drift_exit",
           f"must be below quality.drift_enter ({cfg.quality.drift_enter}), got "
           f"{_short(cfg.quality.drift_exit)}"
           + (" (the default): set quality.drift_exit below drift_enter"
              if cfg.quality.drift_exit == QualityConfig.drift_exit else ""))
    if cfg.metrics.listen:
        try:
            metrics_address(cfg.metrics.listen)
        except ValueError:
            raise ConfigError(f"metrics.listen: must be HOST:PORT (e.g. 127.0.0.1:9108), got "
                              f"{_short(cfg.metrics.listen)}") from None
        _check(importlib.util.find_spec("prometheus_client") is not None, "metrics.listen",
               "needs prometheus-client: pip install 'segedge[metrics]'")
    _check(not any(c.samples.enabled for c in cfg.cameras) or bool(cfg.samples.dir),
           "samples.dir", "must not be empty while a camera saves samples")
    c = cfg.commands
    _check(not c.persist or bool(c.state_file or cfg.health_file), "commands.persist",
           "needs commands.state_file (or health_file, beside which commands.json goes)")


def state_file(cfg: Config) -> str:
    """Where persisted command settings live ("" when not persisted)."""
    if not cfg.commands.persist:
        return ""
    return cfg.commands.state_file or str(Path(cfg.health_file).parent / "commands.json")
