"""Which topics the agent may publish to: pure string rules, unit-tested with plain data.

Two rules (docs/security.md, "The agent's replies: only where the asker lives"), and the
one topic built here rather than in ``MqttComms.topic``: ``quality_topic`` (the Home
Assistant discovery names it too):

- ``publish_topic_problem``: any topic the agent hands to its MQTT client must be a
  valid MQTT topic name (non-empty, no ``+``/``#``, no NUL, valid UTF-8, at most
  65535 bytes). ``MqttComms`` checks every publish with it, so an invalid topic is a
  counted, logged refusal, never an exception in a publishing thread.
- ``reply_topic_problem``: an MQTT 5 *response topic* that came with a request is used
  only when it lies in the asker's own reply tree, ``<prefix>/<owner>/reply/<suffix>``:
  a frame from sender ``S`` (``<prefix>/<device_id>/frames_in/<S>``) may ask for its
  answer under ``<prefix>/<S>/reply/...``; a command on ``<prefix>/<X>/<feature>/set``
  under ``<prefix>/<X>/reply/...``. Anything else is refused whole (the frame is not
  inferred, the command not applied), so a sender can never make the device publish
  with the device's rights on a topic the sender names (a camera's masks, the agent's
  retained status, Home Assistant discovery, another ``/set``).
"""

from __future__ import annotations

from typing import Optional

MAX_TOPIC_BYTES = 65535  # MQTT's limit on a topic name (a UTF-8 string with a 2-byte length)
REPLY_TOPIC_MAX_BYTES = 256  # a response topic is short: <prefix>/<id>/reply/<client token>
REPLY_LEVEL = "reply"


def _utf8(topic: str) -> Optional[bytes]:
    try:
        return topic.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: not text MQTT can carry
        return None


def publish_topic_problem(topic: object) -> Optional[str]:
    """Why ``topic`` cannot be published to (one line), or None when it is a valid name."""
    if not isinstance(topic, str):
        return f"topic is not text ({type(topic).__name__})"
    if not topic:
        return "empty topic"
    raw = _utf8(topic)
    if raw is None:
        return "topic is not valid UTF-8"
    if len(raw) > MAX_TOPIC_BYTES:
        return f"topic of {len(raw)} bytes (MQTT allows {MAX_TOPIC_BYTES})"
    if "+" in topic or "#" in topic:
        return "topic contains a wildcard (+ or #)"
    if "\x00" in topic:
        return "topic contains NUL"
    return None


def quality_topic(prefix: str, camera_id: str) -> str:
    """A camera's retained quality message: ``<prefix>/<camera_id>/quality`` (QoS 1;
    docs/quality.md). Left in place when the camera goes, like its ``offline`` status."""
    return f"{prefix}/{camera_id}/quality"


def reply_tree(prefix: str, owner: str) -> str:
    """The topics an asker may name for its answers: ``<prefix>/<owner>/reply/...``."""
    return f"{prefix}/{owner}/{REPLY_LEVEL}/"


def reply_topic_problem(prefix: str, owner: str, topic: object,
                        max_bytes: int = REPLY_TOPIC_MAX_BYTES) -> Optional[str]:
    """Why a request's response topic is refused (one line), or None when it may be used.

    ``owner``: the asker's id: the frames-in sender, or the id a command was addressed
    to. Accepted: ``<prefix>/<owner>/reply/<suffix>``, ``<suffix>`` one or more
    non-empty levels, no ``+``, ``#`` or NUL, valid UTF-8, the whole topic at most
    ``max_bytes`` bytes.
    """
    tree = reply_tree(prefix, owner)
    if not isinstance(topic, str):
        return f"response topic is not text ({type(topic).__name__})"
    shown = " ".join(topic.split())[:80]
    raw = _utf8(topic)
    if raw is None:
        return "response topic is not valid UTF-8"
    if len(raw) > max_bytes:
        return f"response topic of {len(raw)} bytes is over {max_bytes}"
    if "+" in topic or "#" in topic or "\x00" in topic:
        return f"response topic '{shown}' contains a wildcard or NUL (replies go under {tree})"
    if not owner or "/" in owner or not topic.startswith(tree):
        return f"response topic '{shown}' is not under {tree}"
    suffix = topic[len(tree):]
    if not suffix or any(level == "" for level in suffix.split("/")):
        return f"response topic '{shown}' needs non-empty levels after {tree}"
    return None
