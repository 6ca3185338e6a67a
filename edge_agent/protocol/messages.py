"""The MQTT payloads as typed dataclasses (see docs/mqtt.md and schemas/*.schema.json)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

SCHEMA_VERSION = 1
STATES = ("online", "degraded", "offline")
MASK_ENCODINGS = ("png", "rle")  # the mask message's ``encoding`` (protocol.encoding)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    precision: str  # of the bundle target: INT8, FP16, FP32


def _json(obj: Any, omit_if_none: tuple = ()) -> str:
    data = asdict(obj)
    for key in omit_if_none:  # fields of several cameras: absent in the single-camera form
        if data.get(key) is None:
            data.pop(key, None)
    return json.dumps(data, separators=(",", ":"), allow_nan=False)


MULTI_CAMERA_FIELDS = ("agent_id", "cameras")
OPTIONAL_FIELDS = MULTI_CAMERA_FIELDS + ("max_packet_bytes", "requests", "quality",
                                         "performance_hint")
QUALITY_STATES = ("warming_up", "ok", "drifting", "no_reference")


@dataclass
class Status:
    device_id: str
    state: str
    ts: float
    agent_version: str
    model: Optional[ModelInfo]
    device: Optional[str]
    reason: Optional[str] = None
    device_errors: Dict[str, str] = field(default_factory=dict)
    runtime: str = ""
    pid: int = 0
    session: str = ""  # this agent process (random), shared with its last will
    seq: int = 0  # statuses sent in the session, from 1 (the will: the last one before it)
    connection: int = 0  # MQTT connection it was sent on (the will: the one it ends)
    # several cameras: a camera's status names its agent (whose status carries the last
    # will); the agent's status maps each camera to its state
    agent_id: Optional[str] = None
    cameras: Optional[Dict[str, str]] = None
    # the agent's own status, MQTT 5: the largest MQTT packet the broker may send the
    # agent (its CONNECT's Maximum Packet Size); a larger frame or command is dropped by
    # the broker unseen, so never answered
    max_packet_bytes: Optional[int] = None
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return _json(self, OPTIONAL_FIELDS)


@dataclass
class Mask:
    device_id: str
    frame_id: int
    captured_at: float
    published_at: float
    latency_ms: float
    width: int
    height: int
    frame_width: int
    frame_height: int
    classes: List[str]
    coverage: Dict[str, float]
    encoding: str
    mask: Any
    model: ModelInfo
    device: str
    # the frame's confidence figures (edge_agent.quality.figures): uncertain, margin;
    # absent when quality is off or the frame had none
    quality: Optional[Dict[str, float]] = None
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return _json(self, ("quality",))


@dataclass
class Stats:
    device_id: str
    ts: float
    uptime_s: float
    interval_s: float
    fps: Dict[str, float]
    latency_ms: Dict[str, Optional[float]]
    frames: Dict[str, int]
    queues: Dict[str, int]
    device: str
    precision: str
    inference_precision: str
    num_requests: int
    model: ModelInfo
    process: Dict[str, float]
    state: str
    session: str = ""
    seq: int = 0  # stats messages of the session, from 1: a gap is a lost interval
    # several cameras: a camera's stats name the agent; the agent's hold its sums and, per
    # camera, its state and rates
    agent_id: Optional[str] = None
    cameras: Optional[Dict[str, Dict[str, Any]]] = None
    # the agent's own stats: requests refused or dropped whole (app.REQUEST_COUNTERS)
    requests: Optional[Dict[str, int]] = None
    # a camera's stats: its quality window (state, figures, drift score); absent when off
    quality: Optional[Dict[str, Any]] = None
    # the OpenVINO hint inference runs under now (model.performance_hint; auto: the choice
    # of the moment); absent for a model on a server
    performance_hint: Optional[str] = None
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return _json(self, OPTIONAL_FIELDS)


@dataclass
class Quality:
    """The retained ``<prefix>/<id>/quality``: the camera's window of confidence figures,
    the bundle's reference, the drift score and state (edge_agent.quality.drift)."""

    device_id: str  # the camera's topic id, as in its status and stats
    camera_id: str
    ts: float
    state: str  # QUALITY_STATES
    since: float  # Unix seconds of the last state change
    model: Dict[str, str]  # name, version
    window: Dict[str, Any]
    reference: Optional[Dict[str, Any]]
    drift: Optional[Dict[str, Any]]
    agent_id: Optional[str] = None  # several cameras: the agent serving the camera
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return _json(self, ("agent_id",))


@dataclass
class Frame:
    """The source frame (JPEG), sent before the mask with the same ``frame_id``."""

    device_id: str
    frame_id: int
    captured_at: float
    width: int
    height: int
    image: str  # base64 of the JPEG bytes
    encoding: str = "jpeg"
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return _json(self)


@dataclass
class FrameError:
    """The reply to a frame sent with an MQTT 5 response topic that got no mask: refused
    (``error`` says why) or replaced by a newer frame of the same sender before inference."""

    device_id: str  # the sender's camera id ("" when the sender id was unusable)
    error: str
    ts: float
    frame_id: Optional[int] = None
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return _json(self)
