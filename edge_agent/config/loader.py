"""Reading the configuration: the TOML file (bounded, one-line errors with the line),
``SEGEDGE_*`` environment overrides, secrets from files, paths relative to the file."""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on the Python 3.9 lane
    import tomli as tomllib

from edge_agent.config.checks import _check, _is, validate
from edge_agent.config.settings import (
    CAMERA_OUTPUT_KEYS,
    CAMERA_SAMPLES_KEYS,
    CAMERA_SOURCE_KEYS,
    ENV_IGNORED,
    ENV_PREFIX,
    MAX_CAMERAS,
    MAX_CONFIG_BYTES,
    MAX_PASSWORD_BYTES,
    PATH_KEYS,
    SECTIONS,
    TABLE_LISTS,
    CameraConfig,
    Config,
    ConfigError,
    MqttConfig,
    OutputConfig,
    SamplesConfig,
    SourceConfig,
    _field_type,
    _key,
    _short,
    _shown,
    _type_name,
    id_problem,
    valid_id,
)

log = logging.getLogger("segedge.config")


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


def _cameras_from(cfg: Config, tables: Any) -> List[CameraConfig]:
    """The ``[[cameras]]`` tables over the [source]/[output] defaults."""
    _check(isinstance(tables, list) and all(isinstance(t, dict) for t in tables), "cameras",
           "must be an array of tables ([[cameras]])")
    _check(len(tables) <= MAX_CAMERAS, "cameras", f"more than {MAX_CAMERAS} cameras")
    known = ("id", "samples") + CAMERA_SOURCE_KEYS + CAMERA_OUTPUT_KEYS
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
        camera = CameraConfig.from_sections(camera_id, replace(cfg.source), cfg.output,
                                            samples=cfg.samples)
        for key, value in table.items():
            if key in CAMERA_SOURCE_KEYS:
                setattr(camera.source, key,
                        _coerce_toml(f"{where}.{key}", _field_type(SourceConfig, key), value))
            elif key in CAMERA_OUTPUT_KEYS:
                setattr(camera, key,
                        _coerce_toml(f"{where}.{key}", _field_type(OutputConfig, key), value))
            elif key == "samples":
                _camera_samples(camera.samples, value, f"{where}.samples")
        cameras.append(camera)
    if len(cameras) > 1:
        for n, camera in enumerate(cameras, 1):
            _check(camera.id != cfg.device_id, f"cameras[{n}].id",
                   f"{_short(camera.id)} is the device_id: with several cameras the agent "
                   f"needs an id of its own")
    return cameras


def _camera_samples(samples: SamplesConfig, table: Any, where: str) -> None:
    """A camera's ``samples`` table over its copy of ``[samples]``."""
    _check(isinstance(table, dict), where, "must be a table, e.g. samples = { enabled = true }")
    for key, value in table.items():
        _check(key in CAMERA_SAMPLES_KEYS, f"{where}.{_key(str(key))}",
               f"unknown key (known: {', '.join(sorted(CAMERA_SAMPLES_KEYS))}; the folder is "
               f"always <samples.dir>/<camera id>)")
        setattr(samples, key,
                _coerce_toml(f"{where}.{key}", _field_type(SamplesConfig, key), value))


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
        cfg.cameras = [CameraConfig.from_sections(cfg.device_id, cfg.source, cfg.output,
                                                  samples=cfg.samples)]
    validate(cfg)
    _check(bool(cfg.cameras) or cfg.frames_in.enabled, "cameras",
           "no camera and frames_in is off: nothing to do (list [[cameras]], or set "
           "[frames_in] enabled = true)")
    return cfg, ignored
