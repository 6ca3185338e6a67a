"""Checks of ``segedge-agent --check-config`` beyond the file itself.

- ``check_devices``: every name in ``model.devices`` must be a device OpenVINO knows:
  its plugin is registered in this OpenVINO, or it is one of the device families that
  OpenVINO releases ship (KNOWN_FAMILIES: MYRIAD has no plugin after 2022.3, yet a
  config with ``["MYRIAD", "CPU"]`` is valid and falls back). A known device that is not
  present on this machine (a GPU config checked on a CPU-only host) is accepted and
  noted: configs are portable, and the agent falls back along the list at run time.
  ``GPUU`` is refused. Also run at start, so a misspelt name exits 78 there too.
- ``probe`` (``--probe``): connect to the broker (TLS and credentials as configured, up
  to the CONNACK), ask ``[model] server`` (when set) whether it is ready, and open each
  configured camera; one line per failure.
"""

from __future__ import annotations

import os
import socket
from typing import Any, List, Tuple
from urllib.parse import urlparse

from edge_agent.config import Config, ConfigError, source_kind

# devices of OpenVINO releases, accepted even where this OpenVINO has no plugin for them
KNOWN_FAMILIES = ("CPU", "GPU", "NPU", "MYRIAD", "HDDL", "GNA", "VPUX")
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "rtmp": 1935, "http": 80, "https": 443}


def _registered(core: Any, family: str) -> Tuple[bool, str]:
    """Whether OpenVINO has a plugin called ``family``, and why not when it failed to load."""
    try:
        return bool(core.get_versions(family)), ""
    except Exception as exc:  # noqa: BLE001 - 2022.3 raises for an unknown name
        text = " ".join(str(exc).split())
        if "not registered" in text or "not found" in text:
            return False, ""
        return True, f"plugin does not load: {text[:200]}"  # registered, fails to load here


def check_devices(devices: List[str]) -> List[str]:
    """The devices not on this machine (with why, when known); ConfigError for a name
    OpenVINO does not know."""
    from edge_agent.inference import ovcompat

    core = ovcompat.new_core()
    present = ovcompat.available_devices(core)
    families = {p.split(".")[0] for p in present}
    notes = []
    for device in devices:
        family = device.split(".")[0]
        registered, broken = _registered(core, family)
        if not registered and family not in KNOWN_FAMILIES:
            raise ConfigError(
                f"model.devices: {device} is not an OpenVINO device (known: "
                f"{', '.join(KNOWN_FAMILIES)}, with an optional .N index; present here: "
                f"{', '.join(present) or 'none'})")
        if not registered:
            broken = f"no {family} plugin in OpenVINO {ovcompat.runtime_version().split('-')[0]}"
        here = device in present or (device == family and family in families) \
            or (device.endswith(".0") and family in present)
        if not here or broken:
            notes.append(device + (f" ({broken})" if broken else ""))
    return notes


def _tcp(host: str, port: int, timeout: float) -> str:
    from edge_agent.protocol.connect import describe_error

    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return ""
    except OSError as exc:
        return describe_error(exc)


def probe_broker(cfg: Config, timeout: float = 10.0) -> str:
    """'' when the broker takes this agent's connection (TLS, credentials), else why not."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edge_agent.protocol import connect

    q = cfg.mqtt
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                         client_id=f"{q.client_id or 'segedge-' + cfg.device_id}-probe",
                         protocol=mqtt.MQTTv5 if q.protocol == "5" else mqtt.MQTTv311)
    if q.username:
        client.username_pw_set(q.username, q.password or None)
    try:
        if q.tls_ca or q.tls_cert:
            client.tls_set(ca_certs=q.tls_ca or None, certfile=q.tls_cert or None,
                           keyfile=q.tls_key or None)
        connect.connect(client, q.host, q.port, keepalive=q.keepalive_s, timeout=timeout)
    except connect.BrokerError as exc:
        return str(exc)
    except (OSError, ValueError) as exc:
        return f"broker {q.host}:{q.port}: TLS files: {connect.describe_error(exc)}"
    client.disconnect()
    client.loop_stop()
    return ""


def probe_camera(uri: str, timeout: float = 5.0) -> str:
    """'' when the camera answers: a network stream's host and port take a TCP
    connection, a V4L2 device opens; files and folders were checked with the config."""
    kind = source_kind(uri)
    if kind == "network":
        url = urlparse(uri)
        port = url.port or DEFAULT_PORTS.get(url.scheme)
        if port is None:  # udp/tcp without a port: nothing to connect to
            return ""
        why = _tcp(url.hostname or "", port, timeout)
        return f"{url.hostname}:{port}: {why}" if why else ""
    if kind == "device":
        path = f"/dev/video{uri}" if uri.isdigit() else uri
        try:
            os.close(os.open(path, os.O_RDWR | os.O_NONBLOCK))
            return ""
        except OSError as exc:
            return f"{path}: {exc.strerror}"
    return ""


def probe_server(cfg: Config, timeout: float = 10.0) -> str:
    """'' when ``[model] server`` answers KServe v2's ``/v2/health/ready`` with 200."""
    import http.client
    import ssl

    m = cfg.model
    url = urlparse(m.server)
    try:
        if url.scheme == "https":
            conn: Any = http.client.HTTPSConnection(
                url.hostname, url.port or 443, timeout=timeout,
                context=ssl.create_default_context(cafile=m.server_ca or None))
        else:
            conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=timeout)
        conn.request("GET", url.path.rstrip("/") + "/v2/health/ready")
        status = conn.getresponse().status
        conn.close()
    except (OSError, http.client.HTTPException) as exc:
        return (f"unreachable at {m.server} "
                f"({getattr(exc, 'strerror', None) or ' '.join(str(exc).split())[:200]})")
    return "" if status == 200 else f"{m.server} is not ready (HTTP {status})"


def probe(cfg: Config) -> List[str]:
    """One line per part that failed (the broker, each camera), [] when all answered."""
    failed = []
    why = probe_broker(cfg)
    if why:
        failed.append(f"mqtt: {why}")
    if cfg.model.server:
        why = probe_server(cfg)
        if why:
            failed.append(f"inference server: {why}")
    for camera in cfg.cameras:
        why = probe_camera(camera.source.uri)
        if why:
            failed.append(f"camera {camera.id}: {why}")  # not the uri: it may hold a password
    return failed
