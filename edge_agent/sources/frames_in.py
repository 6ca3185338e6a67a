"""Frames from other devices over MQTT: the agent as an inference service.

A sender (an ESP32-CAM, a Raspberry Pi, a script) publishes a frame to
``<prefix>/<agent_id>/frames_in/<sender>`` (``frames_in.topic``): raw JPEG or PNG bytes,
or JSON ``{"image": "<base64 JPEG/PNG>", "frame_id": 7, "captured_at": 1795603869.1}``.
Each sender becomes a camera of its own (id = the topic's ``+`` level): its masks,
stats and status go to ``<prefix>/<sender>/...`` as for any camera, latest frame wins
per sender. A frame that carries an MQTT 5 response topic also gets its mask sent
there, with the request's correlation data: a client can call the service like an RPC
(a frame refused or replaced before inference gets a ``frame_error`` reply instead).
The response topic must lie in the sender's own reply tree, ``<prefix>/<sender>/reply/
...`` (``topics.reply_topic_problem``): a frame naming any other is refused whole (not
inferred, nothing published, counted in ``frames.refused`` and the agent's
``requests.reply_topic_refused``), so a sender cannot make the device publish where the
sender may not.

Bounded and safe: paho's network thread only checks the size and the sender and keeps
the newest raw frame per sender (at most ``max_senders`` senders, each at most
``max_bytes``) and checks the response topic; the ``frames_in`` thread validates the
header (format, width and height within ``max_side``, pixels within ``max_pixels`` and
believable for the bytes that carry them) before decoding, and hands the image to the shared
inference. Refusals are counted (the sender camera's ``frames.refused``, or the
agent's for senders that are not served) and logged once per sender per minute.
A silent sender turns ``degraded`` after ``stall_timeout_s`` and is forgotten after
``forget_after_s`` (its status ``offline``). The broker's ACL decides who may send.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, Dict, Optional, Set, Tuple

import cv2
import numpy as np

from edge_agent.cameras import Camera
from edge_agent.config import FramesInConfig, valid_id
from edge_agent.health.pacing import LogThrottle
from edge_agent.protocol.encoding import (
    PNG_SIGNATURE,
    MaskError,
    image_budget_problem,
    image_size,
)
from edge_agent.protocol.messages import FrameError
from edge_agent.protocol.topics import reply_topic_problem
from edge_agent.sources.slots import Frame, FrameSlots

log = logging.getLogger("segedge.frames_in")
JPEG_MAGIC = b"\xff\xd8\xff"
LOG_EVERY_S = 60.0  # refusals: one log line per sender per minute
NOTICES_MAX = 256  # refusals waiting for the frames_in thread (count, log, reply)
TICK_S = 0.5
DROPPED_UNDECODED = "dropped: a newer frame from the same sender came before this one was decoded"
DROPPED_QUEUED = "dropped: a newer frame from the same sender came before inference took this one"


class FrameRefused(Exception):
    """Why an incoming frame is not used; ``str()`` is one line."""


@dataclass(frozen=True)
class IncomingFrame:
    data: bytes  # JPEG or PNG bytes
    width: int
    height: int
    frame_id: Optional[int] = None  # as the sender numbered it
    captured_at: Optional[float] = None  # the sender's Unix seconds


def sender_of(topic_filter: str, topic: str) -> Optional[str]:
    """The level of ``topic`` at the filter's ``+``; None when the topic does not match."""
    want, got = topic_filter.split("/"), topic.split("/")
    if len(want) != len(got):
        return None
    sender = None
    for w, g in zip(want, got):
        if w == "+":
            sender = g
        elif w != g:
            return None
    return sender


def _json_frame(payload: bytes) -> Tuple[bytes, Optional[int], Optional[float]]:
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise FrameRefused("JSON frame: not valid UTF-8 JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("image"), str):
        raise FrameRefused('JSON frame: expected an object with "image" (base64 JPEG or PNG)')
    frame_id, captured_at = data.get("frame_id"), data.get("captured_at")
    if frame_id is not None and (not isinstance(frame_id, int) or isinstance(frame_id, bool)
                                 or not 0 <= frame_id < 2 ** 63):
        raise FrameRefused("JSON frame: frame_id must be an integer >= 0")
    if captured_at is not None and (not isinstance(captured_at, (int, float))
                                    or isinstance(captured_at, bool)
                                    or not math.isfinite(captured_at)):
        raise FrameRefused("JSON frame: captured_at must be a number (Unix seconds)")
    try:
        raw = base64.b64decode(data["image"], validate=True)
    except (binascii.Error, ValueError):
        raise FrameRefused('JSON frame: "image" is not valid base64') from None
    return raw, frame_id, None if captured_at is None else float(captured_at)


def parse_frame(payload: bytes, max_bytes: int, max_side: int,
                max_pixels: int = 4096 * 4096) -> IncomingFrame:
    """Check a frame message without decoding pixels; FrameRefused says why not."""
    if len(payload) > max_bytes:
        raise FrameRefused(f"frame of {len(payload)} bytes is over frames_in.max_bytes "
                           f"({max_bytes})")
    frame_id = captured_at = None
    if payload.lstrip()[:1] == b"{":
        raw, frame_id, captured_at = _json_frame(payload)
    else:
        raw = payload
    if not (raw.startswith(JPEG_MAGIC) or raw.startswith(PNG_SIGNATURE)):
        raise FrameRefused("unknown format: expected JPEG or PNG bytes, or JSON with a "
                           'base64 "image"')
    try:
        width, height = image_size(raw)
    except MaskError as exc:
        raise FrameRefused(f"undecodable image: {exc}") from None
    if not (0 < width <= max_side and 0 < height <= max_side):
        raise FrameRefused(f"image of {width}x{height} is outside 1..{max_side} per side "
                           f"(frames_in.max_side)")
    problem = image_budget_problem(raw, width, height, max_pixels)
    if problem:
        raise FrameRefused(f"{problem} (frames_in.max_pixels)" if width * height > max_pixels
                           else problem)
    return IncomingFrame(raw, width, height, frame_id, captured_at)


def decode_frame(frame: IncomingFrame) -> np.ndarray:
    """BGR pixels of a checked frame; FrameRefused when they do not decode as declared."""
    try:
        image = cv2.imdecode(np.frombuffer(frame.data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise FrameRefused(f"undecodable image: {' '.join(str(exc).split())[:120]}") from None
    if image is None or image.shape[:2] != (frame.height, frame.width):
        raise FrameRefused("undecodable image: the data does not decode to its header's size")
    return image


@dataclass
class _Pending:
    payload: bytes
    response_topic: Optional[str]
    correlation: Optional[bytes]
    received_mono: float
    received_at: float


@dataclass
class _Notice:
    """A frame not served, told by paho's thread to the frames_in thread."""

    sender: Optional[str]  # a served sender, or None (the refusal is the agent's)
    dropped: bool  # True: replaced by a newer frame of its sender; False: refused
    error: str
    response_topic: Optional[str]  # None: not answered (none asked, or not the asker's)
    correlation: Optional[bytes]
    reply_refused: bool = False  # refused for its response topic: counted apart, no reply
    asker: Optional[str] = None  # the topic's sender level, for the once-a-minute log


@dataclass
class SenderHooks:
    """What the agent does for the frames_in thread (it owns cameras and health)."""

    open: Callable[[str], Optional[Camera]]  # a new sender: its camera (None: refused)
    close: Callable[[str, str], None]  # sender, why: forget it (status offline)
    state: Callable[[str, Optional[str]], None]  # sender, health reason (None: fine)
    refused: Callable[[], None]  # a refusal that belongs to no camera: the agent's count
    reply: Callable[[str, str, Optional[bytes]], bool]  # topic, text, correlation data
    reply_refused: Callable[[], None] = lambda: None  # a response topic not the sender's


class FramesIn(threading.Thread):
    def __init__(self, cfg: FramesInConfig, topic_filter: str, reserved: Set[str],
                 slots: FrameSlots, hooks: SenderHooks, stop: threading.Event,
                 prefix: str = "segedge") -> None:
        """``reserved``: ids a sender may not take (configured cameras, the agent);
        ``prefix``: the MQTT prefix of reply trees (``<prefix>/<sender>/reply/...``)."""
        super().__init__(name="frames_in", daemon=True)
        self.cfg, self.topic_filter, self.reserved = cfg, topic_filter, set(reserved)
        self.prefix = prefix
        self.allowed = set(cfg.senders)
        self.slots, self.hooks, self.stop = slots, hooks, stop
        self._cond = threading.Condition()
        self._pending: Dict[str, _Pending] = {}
        self._notices: Deque[_Notice] = deque(maxlen=NOTICES_MAX)
        self._known: Set[str] = set()  # senders with a camera (read by paho's thread)
        # frames_in thread only:
        self._cameras: Dict[str, Camera] = {}
        self._last_seen: Dict[str, float] = {}
        self._stalled: Set[str] = set()
        self._refusal_note = LogThrottle(LOG_EVERY_S, max_keys=4 * cfg.max_senders)

    # --- paho's network thread: check cheaply, keep the newest, return ------------------
    def incoming(self, topic: str, payload: bytes, retained: bool,
                 response_topic: Optional[str], correlation: Optional[bytes]) -> None:
        sender = sender_of(self.topic_filter, topic)
        if response_topic is not None:  # answers go only under the sender's reply tree
            problem = reply_topic_problem(self.prefix, sender or "", response_topic)
            if problem is not None:
                with self._cond:
                    self._notice(_Notice(sender if sender in self._known else None, False,
                                         f"{sender!r}: {problem}", None, None, True, sender))
                    self._cond.notify()
                return
        error = self._sender_problem(sender)
        if error is None and retained:
            error = "retained frames are ignored (publish frames with retain=false)"
        if error is None and len(payload) > self.cfg.max_bytes:
            error = (f"frame of {len(payload)} bytes is over frames_in.max_bytes "
                     f"({self.cfg.max_bytes})")
        with self._cond:
            if error is None and sender not in self._known and sender not in self._pending \
                    and len(self._known | set(self._pending)) >= self.cfg.max_senders:
                error = f"over frames_in.max_senders ({self.cfg.max_senders} senders served)"
            if error is not None:
                self._notice(_Notice(sender if sender in self._known else None, False,
                                     f"{sender!r}: {error}" if sender is not None else error,
                                     response_topic, correlation))
                return
            old = self._pending.get(sender)
            if old is not None:  # latest wins: counted as dropped (and answered, if asked)
                self._notice(_Notice(sender, True, DROPPED_UNDECODED, old.response_topic,
                                     old.correlation))
            self._pending[sender] = _Pending(payload, response_topic, correlation,
                                             time.monotonic(), time.time())
            self._cond.notify()

    def _sender_problem(self, sender: Optional[str]) -> Optional[str]:
        if sender is None:
            return f"topic does not match frames_in.topic {self.topic_filter!r}"
        if not valid_id(sender) or sender in self.reserved:
            return ("sender id is not usable (an invalid id, or a configured camera's or the "
                    "agent's own)")
        if self.allowed and sender not in self.allowed:
            return "sender not in frames_in.senders"
        return None

    def _notice(self, notice: _Notice) -> None:
        if len(self._notices) == self._notices.maxlen:
            self.hooks.refused()  # the oldest goes unanswered: a frame not served, counted
        self._notices.append(notice)

    # --- the frames_in thread ---------------------------------------------------------
    def run(self) -> None:
        while not self.stop.is_set():
            with self._cond:
                if not self._pending and not self._notices:
                    self._cond.wait(TICK_S)
                pending, self._pending = self._pending, {}
                notices = list(self._notices)
                self._notices.clear()
            for notice in notices:
                self._handle_notice(notice)
            for sender, item in pending.items():
                try:
                    self._handle_frame(sender, item)
                except Exception:  # noqa: BLE001 - one bad frame must not end the service
                    log.exception("frames_in: handling a frame from %r failed", sender)
            self._check_senders(time.monotonic())

    def _handle_notice(self, notice: _Notice) -> None:
        camera = self._cameras.get(notice.sender) if notice.sender else None
        if notice.dropped:
            self._dropped(camera, notice.sender, notice.error, notice.response_topic,
                          notice.correlation, None)
        else:
            if notice.reply_refused:
                self.hooks.reply_refused()
            self._refuse(camera, notice.sender, notice.error, notice.response_topic,
                         notice.correlation, notice.asker)

    def _dropped(self, camera: Optional[Camera], sender: Optional[str], why: str,
                 topic: Optional[str], correlation: Optional[bytes],
                 frame_id: Optional[int]) -> None:
        """A frame replaced by a newer one of its sender: counted, answered if asked."""
        if camera is not None:
            camera.count("dropped")
        self._reply_error(sender, why, topic, correlation, frame_id)

    def _refuse(self, camera: Optional[Camera], sender: Optional[str], error: str,
                topic: Optional[str], correlation: Optional[bytes],
                asker: Optional[str] = None) -> None:
        """A frame refused: counted (by its camera, else the agent), logged, answered."""
        if camera is not None:
            camera.count("refused")
        else:
            self.hooks.refused()
        self._log_refusal(asker or sender, error)
        self._reply_error(sender, error, topic, correlation, None)

    def _log_refusal(self, sender: Optional[str], error: str) -> None:
        if self._refusal_note.allow(sender):
            log.warning("frames_in: frame refused%s: %s",
                        f" from {sender}" if sender else "", error[:300])

    def _reply_error(self, sender: Optional[str], error: str, topic: Optional[str],
                     correlation: Optional[bytes], frame_id: Optional[int]) -> None:
        if not topic:
            return
        message = FrameError(device_id=sender or "", error=error[:300], frame_id=frame_id,
                             ts=round(time.time(), 3))
        self.hooks.reply(topic, message.to_json(), correlation)

    def _handle_frame(self, sender: str, item: _Pending) -> None:
        camera = self._cameras.get(sender)
        if camera is None:
            camera = self.hooks.open(sender)
            if camera is None:
                return
            self._cameras[sender] = camera
            with self._cond:
                self._known.add(sender)
            log.info("frames_in: new sender %s", sender)
        self._last_seen[sender] = item.received_mono
        if sender in self._stalled:
            self._stalled.discard(sender)
            self.hooks.state(sender, None)
        try:
            frame = parse_frame(item.payload, self.cfg.max_bytes, self.cfg.max_side,
                                self.cfg.max_pixels)
            image = decode_frame(frame)
        except FrameRefused as exc:
            self._refuse(camera, sender, str(exc), item.response_topic, item.correlation)
            return
        camera.frame_id = frame.frame_id if frame.frame_id is not None else camera.frame_id + 1
        captured_at = frame.captured_at if frame.captured_at is not None else item.received_at
        accepted, replaced = self.slots.put(sender, Frame(
            camera.frame_id, image, captured_at, item.received_mono, item.response_topic,
            item.correlation))
        if not accepted:
            return
        camera.count("captured")
        if replaced is not None:
            self._dropped(camera, sender, DROPPED_QUEUED, replaced.reply_to,
                          replaced.correlation, replaced.frame_id)

    def _check_senders(self, now: float) -> None:
        for sender, seen in list(self._last_seen.items()):
            age = now - seen
            forget = self.cfg.forget_after_s
            if forget and age > forget:
                self._forget(sender, f"no frame for {age:.0f} s")
            elif self.cfg.stall_timeout_s and age > self.cfg.stall_timeout_s \
                    and sender not in self._stalled:
                self._stalled.add(sender)
                self.hooks.state(sender, f"source: no frame from sender for {age:.1f} s")

    def _forget(self, sender: str, reason: str) -> None:
        self._cameras.pop(sender, None)
        self._last_seen.pop(sender, None)
        self._stalled.discard(sender)
        with self._cond:
            self._known.discard(sender)
        log.info("frames_in: sender %s forgotten: %s", sender, reason)
        self.hooks.close(sender, f"sender gone: {reason}")

    def senders(self) -> Tuple[str, ...]:
        return tuple(self._cameras)
