"""What the dashboard knows of the fleet: one bounded card per device or camera id.

Pure and thread-safe: paho's network thread calls :meth:`Fleet.handle`, the page's
event streams call :meth:`Fleet.changes`. Every message is untrusted, and memory is
bounded whatever devices send: at most ``max_devices`` ids, a JSON message at most
``max_json_bytes``, an overlay at most ``max_overlay_bytes`` and all overlays together at
most ``overlay_budget_bytes`` (the least recently updated go first); only whitelisted
fields are kept, strings cut. Everything refused is counted in ``dropped`` by reason.

Statuses are ordered as docs/mqtt.md, "Ordering statuses (and the last will)" says, and a
camera shows ``offline`` while its agent does (docs/mqtt.md, "Several cameras").
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from edge_agent.config import valid_id

MAX_DEVICES = 1000
MAX_JSON_BYTES = 64 << 10  # an agent's status/stats are ~1-3 KB
MAX_OVERLAY_BYTES = 512 << 10  # a 1280x720 overlay at the agent's quality is ~100-200 KB
OVERLAY_BUDGET_BYTES = 64 << 20
TEXT_MAX = 200  # characters kept of any string field
QUALITY_KEYS_MAX = 8
KINDS = ("status", "stats", "overlay", "paused")
DROP_REASONS = ("too_many_devices", "bad_id", "too_large", "not_json", "not_object",
                "not_jpeg", "overlay_budget")


def _text(value: Any, limit: int = TEXT_MAX) -> Optional[str]:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def _num(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _dict(value: Any) -> Dict[str, Any]:
    return value if isinstance(value, dict) else {}


def status_key(status: Dict[str, Any]) -> Tuple[int, int, int]:
    """``(connection, will, seq)`` of a status (docs/mqtt.md's ordering rule)."""
    will = int(status.get("state") == "offline" and status.get("reason") == "connection lost")
    return (_int(status.get("connection")), will, _int(status.get("seq")))


def is_will(status: Dict[str, Any]) -> bool:
    return status_key(status)[1] == 1


def replaces(shown: Dict[str, Any], new: Dict[str, Any]) -> bool:
    """Whether status ``new`` replaces the ``shown`` one."""
    if not shown or new.get("session") is None:  # without a session there is no order
        return True
    if new.get("session") == shown.get("session"):
        return status_key(new) > status_key(shown)
    return not is_will(new)  # a will of a session we are not showing: already over


@dataclass
class Card:
    id: str
    status: Dict[str, Any] = field(default_factory=dict)  # the raw status shown (ordering)
    state: Optional[str] = None
    reason: Optional[str] = None
    agent_id: Optional[str] = None
    cameras: int = 0  # an agent's number of cameras
    model: Optional[str] = None
    device: Optional[str] = None
    fps: Dict[str, Optional[float]] = field(default_factory=dict)
    latency: Dict[str, Optional[float]] = field(default_factory=dict)
    frames: Dict[str, int] = field(default_factory=dict)
    quality: Dict[str, Any] = field(default_factory=dict)
    paused: Optional[bool] = None
    last_seen: Optional[float] = None  # Unix seconds of the last message about this id
    overlay: Optional[bytes] = None
    overlay_seq: int = 0
    overlay_at: Optional[float] = None
    version: int = 0


class Fleet:
    def __init__(self, max_devices: int = MAX_DEVICES, max_json_bytes: int = MAX_JSON_BYTES,
                 max_overlay_bytes: int = MAX_OVERLAY_BYTES,
                 overlay_budget_bytes: int = OVERLAY_BUDGET_BYTES,
                 clock: Callable[[], float] = time.time) -> None:
        self.max_devices, self.max_json_bytes = max_devices, max_json_bytes
        self.max_overlay_bytes, self.overlay_budget_bytes = max_overlay_bytes, overlay_budget_bytes
        self.clock = clock
        self.cards: Dict[str, Card] = {}
        self.received = dict.fromkeys(KINDS, 0)
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self.overlay_bytes = 0
        self._overlay_lru: OrderedDict[str, int] = OrderedDict()
        self._version = 0
        self.changed = threading.Condition()  # its lock guards everything here

    # ---- input (paho's thread) -------------------------------------------------------
    def handle(self, device_id: str, kind: str, payload: bytes, retained: bool = False) -> bool:
        """Take one message for ``device_id``; False when it was dropped (and counted)."""
        if kind not in KINDS:
            return False
        data, problem = self._check(device_id, kind, payload)  # parsed outside the lock
        with self.changed:
            self.received[kind] += 1
            if problem:
                return self._drop(problem)
            card = self.cards.get(device_id)
            if card is None:
                if len(self.cards) >= self.max_devices:
                    return self._drop("too_many_devices")
                card = self.cards[device_id] = Card(device_id)
            if kind == "overlay":
                return self._overlay(card, bytes(payload))
            if kind == "paused":
                text = bytes(payload[:8]).decode("ascii", "replace").strip().upper()
                card.paused = True if text == "ON" else False if text == "OFF" else None
                return self._touched(card, retained, None)
            if kind == "status":
                self._status(card, data)
            else:
                self._stats(card, data)
            return self._touched(card, retained, _num(data.get("ts")))

    def _check(self, device_id: str, kind: str, payload: bytes) -> Tuple[Dict[str, Any], str]:
        """The JSON object of a status/stats message, or the reason to drop the message."""
        if not valid_id(device_id):
            return {}, "bad_id"
        limit = self.max_overlay_bytes if kind == "overlay" else self.max_json_bytes
        if len(payload) > limit:
            return {}, "too_large"
        if kind == "overlay" and bytes(payload[:2]) != b"\xff\xd8":
            return {}, "not_jpeg"
        if kind not in ("status", "stats"):
            return {}, ""
        try:
            data = json.loads(payload)
        except ValueError:
            return {}, "not_json"
        return (data, "") if isinstance(data, dict) else ({}, "not_object")

    def _drop(self, reason: str) -> bool:
        self.dropped[reason] += 1
        return False

    def _bump(self, card: Card) -> None:
        self._version += 1
        card.version = self._version
        self.changed.notify_all()

    def _touched(self, card: Card, retained: bool, ts: Optional[float]) -> bool:
        now = self.clock()
        if not retained:
            card.last_seen = now
        elif ts is not None and card.last_seen is None:  # a retained message: when it was sent
            card.last_seen = min(ts, now)
        self._bump(card)
        return True

    def _status(self, card: Card, data: Dict[str, Any]) -> None:
        if not replaces(card.status, data):
            return
        card.status = {k: data.get(k) for k in ("session", "connection", "seq", "state",
                                                 "reason")}
        card.state = _text(data.get("state"), 16)
        card.reason = _text(data.get("reason"))
        agent = data.get("agent_id")
        card.agent_id = agent if valid_id(agent) else None
        cameras = data.get("cameras")
        card.cameras = len(cameras) if isinstance(cameras, dict) else 0
        model = _dict(data.get("model"))
        if model:
            card.model = _text(" ".join(str(model[k]) for k in ("name", "version", "precision")
                                        if model.get(k) is not None), 80)
        if data.get("device") is not None:
            card.device = _text(data.get("device"), 40)
        if card.cameras:  # an agent's state is its cameras' effective state too
            for other in self.cards.values():
                if other.agent_id == card.id:
                    self._bump(other)

    def _stats(self, card: Card, data: Dict[str, Any]) -> None:
        fps, lat = _dict(data.get("fps")), _dict(data.get("latency_ms"))
        card.fps = {k: _num(fps.get(k)) for k in ("capture", "inference", "publish")}
        card.latency = {k: _num(lat.get(k)) for k in ("p50", "p95")}
        frames = _dict(data.get("frames"))
        card.frames = {k: _int(frames.get(k)) for k in ("published", "dropped", "stale",
                                                         "errors")}
        quality = _dict(data.get("quality"))
        card.quality = {_text(k, 40): (_num(v) if _num(v) is not None else _text(v, 40))
                        for k, v in list(quality.items())[:QUALITY_KEYS_MAX]
                        if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        if data.get("device") is not None:
            card.device = _text(data.get("device"), 40)
        cameras = data.get("cameras")
        if isinstance(cameras, dict):
            card.cameras = len(cameras)

    def _overlay(self, card: Card, payload: bytes) -> bool:
        if len(payload) > self.overlay_budget_bytes:
            return self._drop("overlay_budget")
        if card.overlay is not None:
            self.overlay_bytes -= len(card.overlay)
        card.overlay = payload
        card.overlay_seq += 1
        card.overlay_at = self.clock()
        self.overlay_bytes += len(payload)
        self._overlay_lru[card.id] = len(payload)
        self._overlay_lru.move_to_end(card.id)
        while self.overlay_bytes > self.overlay_budget_bytes:
            old_id, _ = self._overlay_lru.popitem(last=False)
            old = self.cards[old_id]
            self.overlay_bytes -= len(old.overlay or b"")
            old.overlay = None
            self.dropped["overlay_budget"] += 1
            self._bump(old)
        return self._touched(card, False, None)

    # ---- output (the page) -----------------------------------------------------------
    def effective_state(self, card: Card) -> Optional[str]:
        agent = self.cards.get(card.agent_id) if card.agent_id else None
        if agent is not None and agent.state == "offline":
            return "offline"
        return card.state

    def view(self, card: Card) -> Dict[str, Any]:
        """What the page gets of one card (already bounded and cleaned)."""
        return {"id": card.id, "state": self.effective_state(card), "own_state": card.state,
                "reason": card.reason, "agent_id": card.agent_id, "cameras": card.cameras,
                "model": card.model, "device": card.device, "fps": card.fps,
                "latency": card.latency, "frames": card.frames, "quality": card.quality,
                "paused": card.paused, "last_seen": card.last_seen,
                "overlay": card.overlay_seq if card.overlay is not None else 0,
                "overlay_at": card.overlay_at}

    def changes(self, since: int) -> Tuple[int, List[Dict[str, Any]]]:
        """The version now and the cards changed after ``since``."""
        with self.changed:
            return self._version, [self.view(c) for c in self.cards.values()
                                   if c.version > since]

    def wait(self, since: int, timeout: float) -> int:
        """Block until something changed after ``since`` (or ``timeout``); the version."""
        with self.changed:
            self.changed.wait_for(lambda: self._version > since, timeout)
            return self._version

    def overlay_of(self, device_id: str) -> Optional[bytes]:
        with self.changed:
            card = self.cards.get(device_id)
            return card.overlay if card else None

    def counters(self) -> Dict[str, Any]:
        with self.changed:
            return {"devices": len(self.cards), "max_devices": self.max_devices,
                    "received": dict(self.received), "dropped": dict(self.dropped),
                    "overlay_bytes": self.overlay_bytes}
