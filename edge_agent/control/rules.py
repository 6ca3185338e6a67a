"""Commands over MQTT: topics, parsing, the runtime settings they change, replies.

Pure and stdlib-only, so every rule is unit-tested with plain data; the MQTT client
(I/O) calls it. Topics follow Frigate's pattern, per camera id::

    <prefix>/<id>/<feature>/set      a command (never retained: retained ones are ignored)
    <prefix>/<id>/<feature>/state    the current value, retained (plain text)

Settings (``paused``, ``max_publish_fps``, ``frame_every``, ``mask_encoding``) have a
state; actions (``snapshot``, ``reload``) have none. ``reload`` is addressed to the
agent id (the model is shared by all cameras); with one camera the agent id is the
camera id. See docs/integrations.md for payloads and replies.

``parse_command`` -> ``CommandState.apply`` -> ``Reply`` are the pure rules;
edge_agent.control.router strings them together behind a ``TokenBucket`` and returns the
messages to publish, so the MQTT client only does the I/O.

Commands change only the running process: nothing is written to disk, so a restart
comes back to the configured values, unless the (future) ``[commands] persist`` knob
says otherwise (``CommandState.to_dict`` / ``from_dict`` are the file format).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from edge_agent.protocol.messages import MASK_ENCODINGS

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 256  # a command is a word or a tiny JSON object; more is refused unread

PAUSED = "paused"
MAX_PUBLISH_FPS = "max_publish_fps"
FRAME_EVERY = "frame_every"
MASK_ENCODING = "mask_encoding"
SNAPSHOT = "snapshot"
RELOAD = "reload"

SETTINGS = (PAUSED, MAX_PUBLISH_FPS, FRAME_EVERY, MASK_ENCODING)
CAMERA_ACTIONS = (SNAPSHOT,)
AGENT_ACTIONS = (RELOAD,)
FEATURES = SETTINGS + CAMERA_ACTIONS + AGENT_ACTIONS

# inclusive ranges; 0 keeps its config meaning (unlimited rate / no frames)
FPS_RANGE = (0.0, 120.0)
FRAME_EVERY_RANGE = (0, 10000)
ENCODINGS = MASK_ENCODINGS

FPS_MIN_POSITIVE = 0.01  # a commanded rate is 0 (unlimited) or at least one mask per 100 s

# Exact tokens, as docs/integrations.md lists them (case matters; no spaces or newlines)
_TRUE = {"ON", "true", "1", "pause"}
_FALSE = {"OFF", "false", "0", "resume"}
_PRESS = {"", "PRESS"}
_DECIMAL = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]+)?")  # JSON's number, less sign and exponent
_INTEGER = re.compile(r"0|[1-9][0-9]*")


class _Number(str):
    """A JSON number as it was written (kept as text so the exact form can be checked)."""


class _Word(str):
    """A payload that is not JSON, as sent (``ON``, ``rle``, ``1e3``, ``1_0``)."""


_NUMBERISH = re.compile(r"[-+]?[0-9_.]*[0-9][0-9_.]*([eE][-+]?[0-9_]+)?|[-+]?(nan|inf|infinity)",
                        re.IGNORECASE)


def set_topic(prefix: str, target_id: str, feature: str) -> str:
    return f"{prefix}/{target_id}/{feature}/set"


def state_topic(prefix: str, target_id: str, feature: str) -> str:
    return f"{prefix}/{target_id}/{feature}/state"


def settings_topic(prefix: str, target_id: str) -> str:
    return f"{prefix}/{target_id}/settings"


def subscription(prefix: str, target_id: str) -> str:
    """The one filter a camera (or the agent) subscribes to: only its own commands."""
    return f"{prefix}/{target_id}/+/set"


def split_topic(prefix: str, topic: str) -> Optional[Tuple[str, str]]:
    """``<prefix>/<id>/<feature>/set`` -> (id, "<feature>/set"); None if not a command topic."""
    head = prefix + "/"
    if not topic.startswith(head):
        return None
    parts = topic[len(head):].split("/")
    if len(parts) != 3 or parts[2] != "set" or not parts[0] or not parts[1]:
        return None
    return parts[0], parts[1] + "/set"


@dataclass(frozen=True)
class Command:
    """A valid command: the feature and its typed value (None for actions)."""

    feature: str
    value: Union[bool, int, float, str, None] = None

    @property
    def is_action(self) -> bool:
        return self.feature in CAMERA_ACTIONS + AGENT_ACTIONS


@dataclass(frozen=True)
class Refusal:
    """Why a message is not a command: one line, naming the feature when known."""

    feature: Optional[str]
    reason: str


def one_line(text: str, limit: int = 60) -> str:
    """Untrusted text made safe for a one-line reason: whitespace folded, length capped."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _json(text: str) -> Any:
    """JSON with every number kept as its text (``_Number``); ValueError when not JSON."""
    def refuse(name: str) -> Any:
        raise ValueError(name)
    return json.loads(text, parse_int=_Number, parse_float=_Number, parse_constant=refuse)


def _unwrap(feature: str, text: str) -> Union[Tuple[Any], Refusal]:
    """Payload text -> (value,). JSON forms: a scalar or {"value": x}; else the bare word,
    exactly as sent (no whitespace is trimmed: ``ON\n`` is not ``ON``)."""
    if text != text.strip():
        return Refusal(feature, f"{feature}: payload has leading or trailing whitespace")
    if text[:1] in ("{", "[", '"'):
        try:
            data = _json(text)
        except (ValueError, RecursionError):
            return Refusal(feature, f"{feature}: payload is not valid JSON")
        if isinstance(data, dict):
            extra = sorted(set(data) - {"value"})
            if extra:
                return Refusal(feature, f"{feature}: unknown key(s) {one_line(', '.join(extra))} "
                                        "(expected {\"value\": ...})")
            return (data.get("value"),)
        if isinstance(data, list):
            return Refusal(feature, f"{feature}: a JSON list is not a command value")
        return (data,)
    if _DECIMAL.fullmatch(text):
        return (_Number(text),)
    if text in ("true", "false", "null"):
        return ({"true": True, "false": False, "null": None}[text],)
    return (_Word(text),)  # a bare word: ON, OFF, PRESS, rle, ... or a number misspelt


def _shown(value: Any) -> str:
    if isinstance(value, _Number):
        return str(value)
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, _Word):
        return f"'{one_line(value)}'"
    if isinstance(value, str):
        return f"the JSON string {json.dumps(one_line(value))}"
    return f"'{one_line(str(value))}'"


def _number(feature: str, value: Any, lo: float, hi: float,
            integer: bool) -> Union[Command, Refusal]:
    """A JSON number written plainly (``5``, ``2.5``; no sign, exponent, ``_``, quotes or
    spaces), in ``lo..hi``; an integer for ``integer``."""
    if isinstance(value, _Word) and _NUMBERISH.fullmatch(value):
        value = _Number(value)  # a number in a form refused below (sign, exponent, _)
    if not isinstance(value, _Number):
        return Refusal(feature, f"{feature}: expected a number, got {_shown(value)}")
    text = str(value)
    if integer and not _INTEGER.fullmatch(text):
        return Refusal(feature, f"{feature}: expected an integer (digits only), got "
                                f"'{one_line(text)}'")
    if not integer and not _DECIMAL.fullmatch(text):
        return Refusal(feature, f"{feature}: expected a decimal number (digits, an optional "
                                f"fraction; no sign or exponent), got '{one_line(text)}'")
    number: Union[int, float] = int(text) if integer else float(text)
    if not lo <= number <= hi:
        return Refusal(feature, f"{feature}: {number} out of range [{lo:g}, {hi:g}]")
    if feature == MAX_PUBLISH_FPS and 0 < number < FPS_MIN_POSITIVE:
        return Refusal(feature, f"{feature}: {number} is below {FPS_MIN_POSITIVE:g} "
                                "(0 = unlimited)")
    return Command(feature, number)


def features_for(target_id: str, agent_id: str, camera_ids: Sequence[str]) -> Tuple[str, ...]:
    """The commands an id answers: a camera's settings and snapshot, the agent's reload
    (both when the agent id is also the camera id, the single-camera case)."""
    known: Tuple[str, ...] = ()
    if target_id in camera_ids:
        known += SETTINGS + CAMERA_ACTIONS
    if target_id == agent_id:
        known += AGENT_ACTIONS
    return known


def parse_command(topic_suffix: str, payload: bytes, retained: bool = False,
                  allowed: Sequence[str] = FEATURES,
                  size: Optional[int] = None) -> Union[Command, Refusal]:
    """``"<feature>/set"`` + payload -> Command, or a Refusal saying why. Never raises.

    Accepts plain values (``ON``/``OFF``, ``5``, ``rle``, ``PRESS``) and JSON (a scalar
    or ``{"value": ...}``). Retained messages are refused: a retained command would be
    replayed on every reconnect and outlive a restart. ``size``: the payload's size as
    sent, when ``payload`` is only its start (the queue keeps 512 bytes).
    """
    parts = topic_suffix.split("/")
    feature = parts[0] if parts else ""
    if len(parts) != 2 or parts[1] != "set":
        return Refusal(None, f"not a command topic: '{one_line(topic_suffix)}'")
    if feature not in FEATURES:
        return Refusal(None, f"unknown command '{one_line(feature)}' "
                             f"(known: {', '.join(FEATURES)})")
    if feature not in allowed:
        return Refusal(feature, f"'{feature}' is not a command of this id "
                                f"(known here: {', '.join(allowed) or 'none'})")
    if retained:
        return Refusal(feature, f"{feature}: retained commands are ignored "
                                "(publish commands with retain=false)")
    if not isinstance(payload, (bytes, bytearray)):
        return Refusal(feature, f"{feature}: payload must be bytes")
    size = max(size or 0, len(payload))
    if size > MAX_PAYLOAD_BYTES:
        return Refusal(feature, f"{feature}: payload of {size} bytes exceeds "
                                f"{MAX_PAYLOAD_BYTES}")
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError:
        return Refusal(feature, f"{feature}: payload is not UTF-8")
    unwrapped = _unwrap(feature, text)
    if isinstance(unwrapped, Refusal):
        return unwrapped
    (value,) = unwrapped
    if feature == PAUSED:
        if isinstance(value, bool):
            return Command(feature, value)
        word = str(value) if isinstance(value, str) else None
        if word in _TRUE:
            return Command(feature, True)
        if word in _FALSE:
            return Command(feature, False)
        return Refusal(feature, f"{feature}: expected ON or OFF (or true/false, 1/0, "
                                f"pause/resume), got {_shown(value)}")
    if feature == MAX_PUBLISH_FPS:
        return _number(feature, value, FPS_RANGE[0], FPS_RANGE[1], integer=False)
    if feature == FRAME_EVERY:
        return _number(feature, value, FRAME_EVERY_RANGE[0], FRAME_EVERY_RANGE[1], integer=True)
    if feature == MASK_ENCODING:
        if isinstance(value, str) and not isinstance(value, _Number) and value in ENCODINGS:
            return Command(feature, str(value))
        return Refusal(feature, f"{feature}: expected one of {', '.join(ENCODINGS)}, "
                                f"got {_shown(value)}")
    # actions: an empty payload, PRESS (Home Assistant's button), {} or null
    if value is None or (isinstance(value, str) and not isinstance(value, _Number)
                         and value in _PRESS):
        return Command(feature)
    return Refusal(feature, f"{feature}: expected an empty payload or PRESS, "
                            f"got '{one_line(text)}'")


@dataclass(frozen=True)
class Reply:
    """The answer to one command: sent to an MQTT 5 response topic (with the request's
    correlation data); under MQTT 3.1.1 the state topic is the answer and a refusal is
    a log line. ``value`` is the setting's value after the command (None for actions)."""

    target_id: str
    feature: Optional[str]
    result: str  # "accepted" | "refused"
    reason: Optional[str] = None
    value: Union[bool, int, float, str, None] = None
    changed: bool = False
    ts: float = 0.0

    @property
    def accepted(self) -> bool:
        return self.result == "accepted"

    def to_dict(self) -> Dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "device_id": self.target_id,
                "feature": self.feature, "result": self.result, "reason": self.reason,
                "value": self.value, "changed": self.changed, "ts": self.ts}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def log_line(self) -> str:
        what = self.feature or "command"
        if self.accepted:
            return f"command {self.target_id}/{what}: accepted (value {self.value!r})"
        return f"command {self.target_id}: refused: {self.reason}"


def refused(target_id: str, refusal: Refusal, ts: float = 0.0) -> Reply:
    return Reply(target_id, refusal.feature, "refused", refusal.reason, ts=ts)


def finish_action(reply: Reply, error: Optional[str], ts: Optional[float] = None) -> Reply:
    """The final reply of an action once its hook ran: ``error`` None = done."""
    if error is None:
        return reply if ts is None else replace(reply, ts=ts)
    return replace(reply, result="refused", reason=f"{reply.feature}: {one_line(error, 200)}",
                   ts=reply.ts if ts is None else ts)


@dataclass(frozen=True)
class CommandState:
    """One camera's runtime settings: the config's values until a command changes them.

    Owned by the camera's pipeline; replaced whole (frozen), never mutated, so a reader
    on another thread always sees a consistent set.
    """

    paused: bool = False
    max_publish_fps: float = 10.0
    frame_every: int = 0
    mask_encoding: str = "png"

    def value(self, feature: str) -> Union[bool, int, float, str]:
        return getattr(self, feature)

    def state_payload(self, feature: str) -> str:
        """The retained ``<feature>/state`` text: ON/OFF, a number, or the encoding."""
        value = self.value(feature)
        if isinstance(value, bool):
            return "ON" if value else "OFF"
        return str(value)

    def state_messages(self, prefix: str, target_id: str) -> Dict[str, str]:
        """topic -> retained payload for every setting (publish on connect and on change)."""
        return {state_topic(prefix, target_id, f): self.state_payload(f) for f in SETTINGS}

    def to_dict(self) -> Dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, **{f: self.value(f) for f in SETTINGS}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def settings_json(self, target_id: str) -> str:
        """The retained ``<prefix>/<id>/settings`` message: all settings in one JSON."""
        return json.dumps({**self.to_dict(), "device_id": target_id}, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Any, base: CommandState) -> Union[CommandState, Refusal]:
        """Restore persisted settings over ``base`` (the config), each value re-checked."""
        if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
            return Refusal(None, "saved command state: not a schema_version 1 object")
        state = base
        for key, value in data.items():
            if key == "schema_version":
                continue
            if key not in SETTINGS:
                return Refusal(None, f"saved command state: unknown key '{one_line(key)}'")
            parsed = parse_command(f"{key}/set", json.dumps(value).encode())
            if isinstance(parsed, Refusal):
                return Refusal(key, f"saved command state: {parsed.reason}")
            state = replace(state, **{key: parsed.value})
        return state

    def apply(self, command: Union[Command, Refusal], target_id: str,
              ts: float = 0.0) -> Tuple[CommandState, Reply]:
        """Pure: the state after ``command`` and the reply. Refusals change nothing.

        Actions leave the state alone and reply accepted: the caller then runs the
        hook (snapshot, reload) and sends ``finish_action(reply, error)``.
        """
        if isinstance(command, Refusal):
            return self, refused(target_id, command, ts)
        if command.feature in AGENT_ACTIONS + CAMERA_ACTIONS:
            return self, Reply(target_id, command.feature, "accepted", ts=ts)
        if command.feature not in SETTINGS:
            return self, refused(target_id, Refusal(None, f"unknown command "
                                                          f"'{command.feature}'"), ts)
        new = replace(self, **{command.feature: command.value})
        return new, Reply(target_id, command.feature, "accepted", value=command.value,
                          changed=new != self, ts=ts)
