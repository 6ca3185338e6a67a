"""Commands and Home Assistant discovery for a running agent: the I/O around the router.

edge_agent.control.router decides (limiter -> parse -> apply -> messages); this module
feeds it and carries out what it decides:

- paho's network thread only queues incoming messages (``incoming``: a bounded queue,
  overflow dropped and counted), so a flood never holds the connection up;
- the ``commands`` thread runs the router and carries out each command as one step:
  everything is checked first (the value, the MQTT 5 response topic: only the addressed
  id's reply tree ``<prefix>/<id>/reply/...``), then the state file is written when
  ``commands.persist`` is on (a failed write refuses the command), then the state is
  applied, health told, the retained state and the reply published; a command refused
  for its response topic or dropped by the token bucket is counted (``requests`` in
  the agent's stats) and, when rate limited, answered;
- actions run on their own short-lived thread, one of each kind at a time: a snapshot
  waits (bounded) for the pipeline to publish the next frame, mask and overlay; a
  reload runs the agent's hook (open + verify + compile + swap), never on the MQTT or
  inference threads;
- on every connect: the retained states and settings, then discovery (or its removals).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Protocol, Sequence, Tuple

from edge_agent import __version__
from edge_agent.cameras import Snapshot
from edge_agent.config import Config, state_file
from edge_agent.control import homeassistant
from edge_agent.control.router import (
    RATE_LIMITED,
    CommandRouter,
    Handled,
    Outgoing,
    PendingAction,
)
from edge_agent.control.rules import PAUSED, RELOAD, SNAPSHOT, CommandState, Refusal
from edge_agent.health.pacing import TokenBucket
from edge_agent.mqtt.connection import MqttComms

log = logging.getLogger("segedge.control")
INBOX_MAX = 100  # commands waiting for the commands thread; beyond it they are dropped
SNAPSHOT_TIMEOUT_S = 5.0
PAUSED_REASON = "paused by command"

# topic, payload (its first INBOX_PAYLOAD bytes), retained, response topic, correlation, size
Incoming = Tuple[str, bytes, bool, Optional[str], Optional[bytes], int]
INBOX_PAYLOAD = 512  # a command is at most 256 bytes: more is refused, its size said
COUNTS = {RATE_LIMITED: "commands_rate_limited", "reply_topic_refused": "reply_topic_refused"}


class _SnapshotTarget(Protocol):
    def request_snapshot(self) -> Optional[Snapshot]: ...


def load_states(path: str, base: Dict[str, CommandState]) -> Dict[str, CommandState]:
    """Persisted settings over the config's, each value re-checked; a bad file is ignored
    with one log line (the config's values run)."""
    if not path or not os.path.exists(path):
        return dict(base)
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read(65536).decode("utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("commands: state file %s ignored: %s", path, exc)
        return dict(base)
    if not isinstance(data, dict):
        log.warning("commands: state file %s ignored: not a JSON object", path)
        return dict(base)
    states = dict(base)
    for camera_id, state in base.items():
        if camera_id not in data:
            continue
        restored = CommandState.from_dict(data[camera_id], state)
        if isinstance(restored, Refusal):
            log.warning("commands: state file %s ignored for %s: %s", path, camera_id,
                        restored.reason)
            continue
        states[camera_id] = restored
        log.info("commands: %s restored from %s: %s", camera_id, path, restored.to_json())
    return states


def save_states(path: str, states: Dict[str, CommandState]) -> Optional[str]:
    """Atomically, mode 0600 (mkstemp's). None, or why not (logged, never raised)."""
    target = Path(path)
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".commands-", dir=str(target.parent))
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({cid: s.to_dict() for cid, s in states.items()}, handle, sort_keys=True)
        os.replace(tmp, target)
        return None
    except OSError as exc:
        log.warning("commands: cannot write %s: %s", path, exc)
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return f"{path}: {exc.strerror or exc}"


class Control:
    """Owns the command router of one agent (every configured camera) and discovery."""

    def __init__(self, cfg: Config, comms: MqttComms, stop: threading.Event,
                 cameras: Callable[[], Sequence[homeassistant.CameraInfo]],
                 reload: Callable[[], Optional[str]],
                 on_paused: Callable[[str, bool], None],
                 count: Callable[[str], None] = lambda name: None) -> None:
        """``cameras()``: what discovery says about each camera (model, classes);
        ``reload()``: swap in the configured bundle, None or why not; ``on_paused``:
        tell health a camera's pause changed; ``count(name)``: one more of the agent's
        ``requests`` counters (``commands_rate_limited``, ``commands_queue_full``,
        ``reply_topic_refused``)."""
        self.count = count
        self.cfg, self.comms, self.stop = cfg, comms, stop
        self.cameras, self._reload, self.on_paused = cameras, reload, on_paused
        self.state_file = state_file(cfg)
        base = {c.id: CommandState(False, c.max_publish_fps, c.frame_every, c.mask_encoding)
                for c in cfg.cameras}
        states = load_states(self.state_file, base) if self.state_file else base
        self.router = CommandRouter(cfg.mqtt.prefix, cfg.device_id, states,
                                    TokenBucket(cfg.commands.rate_per_s, cfg.commands.burst))
        self.ha = homeassistant.DiscoverySettings(cfg.homeassistant.enabled,
                                                  cfg.homeassistant.discovery_prefix,
                                                  cfg.output.overlay_interval_s)
        self.snapshot_targets: Dict[str, _SnapshotTarget] = {}  # camera id -> its Camera
        self._inbox: queue.Queue[Incoming] = queue.Queue(INBOX_MAX)
        self.inbox_dropped = 0
        self._last_drop_log = 0.0
        self._discovery_topics: List[str] = []
        self._discovery_lock = threading.Lock()  # main thread (connect) and reload thread
        self._actions_lock = threading.Lock()
        self._reloading = False
        self._thread = threading.Thread(target=self._run, name="commands", daemon=True)

    def state(self, camera_id: str) -> CommandState:
        return self.router.state(camera_id)

    # --- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        for cid in self.router.camera_ids:
            self.on_paused(cid, self.router.state(cid).paused)
        if self.cfg.commands.enabled:
            self.comms.on_message = self.incoming
            for topic in self.router.subscriptions():
                self.comms.subscribe(topic, 1)
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    # --- paho's network thread: queue and return ----------------------------------------
    def incoming(self, topic: str, payload: bytes, retained: bool,
                 response_topic: Optional[str], correlation_data: Optional[bytes]) -> None:
        try:
            self._inbox.put_nowait((topic, payload[:INBOX_PAYLOAD], retained, response_topic,
                                    correlation_data, len(payload)))
        except queue.Full:
            self.inbox_dropped += 1  # not answered: the queue sheds a flood's load
            self.count("commands_queue_full")

    # --- the commands thread -------------------------------------------------------------
    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                item = self._inbox.get(timeout=0.2)
            except queue.Empty:
                self._note_drops()
                continue
            try:
                self._handle(*item)
            except Exception:  # noqa: BLE001 - one bad message must not end the commands
                log.exception("commands: handling a message on %r failed", item[0][:120])
            self._note_drops()

    def _handle(self, topic: str, payload: bytes, retained: bool,
                response_topic: Optional[str], correlation: Optional[bytes],
                size: int = 0) -> None:
        """One command, as one step: decided (every check, the response topic included,
        before anything changes), persisted, applied, told to health, then published."""
        handled = self.router.decide(topic, payload, retained=retained,
                                     response_topic=response_topic,
                                     correlation_data=correlation, ts=round(time.time(), 3),
                                     size=size)
        if handled.count:
            self.count(COUNTS.get(handled.count, handled.count))
        reply = handled.reply
        if handled.commit is not None and reply is not None and reply.changed:
            target = handled.commit[0]
            error = None
            if self.state_file:
                states = {cid: self.router.state(cid) for cid in self.router.camera_ids}
                states[target] = handled.commit[1]
                error = save_states(self.state_file, states)
            if error is not None:  # not applied at all: the state stays, the reply says why
                handled = self.router.unsaved(handled, error, response_topic, correlation)
            else:
                self.router.commit(handled)
                if reply.feature == PAUSED:
                    self.on_paused(target, self.router.state(target).paused)
        else:
            self.router.commit(handled)  # unchanged: nothing to persist or report
        self._carry_out(handled, log_accepted=handled.action is None)
        if handled.action is not None:
            self._start_action(handled.action)

    def _note_drops(self) -> None:
        now = time.monotonic()
        if self.inbox_dropped and now - self._last_drop_log > 60:
            self._last_drop_log = now
            log.warning("commands: %d dropped because the queue was full (a flood)",
                        self.inbox_dropped)

    def _carry_out(self, handled: Handled, log_accepted: bool = True) -> None:
        if handled.log:
            log.warning("%s", handled.log)
        elif log_accepted and handled.reply is not None and handled.reply.accepted:
            log.info("%s", handled.reply.log_line())
        for out in handled.outgoing:
            self._publish(out)

    def _publish(self, out: Outgoing) -> None:
        if out.retain:
            self.comms.publish_retained(out.topic, out.payload)
        else:
            self.comms.publish_reply(out.topic, out.payload, out.correlation_data)

    # --- actions --------------------------------------------------------------------------
    def _start_action(self, action: PendingAction) -> None:
        if action.feature == RELOAD:
            with self._actions_lock:
                busy, self._reloading = self._reloading, True
            if busy:
                self._carry_out(self.router.finish(action, "already running"))
                return
            target: Callable[[PendingAction], None] = self._do_reload
        elif action.feature == SNAPSHOT:
            target_camera = self.snapshot_targets.get(action.target_id)
            snap = target_camera.request_snapshot() if target_camera else None
            if snap is None:
                why = "one is already pending" if target_camera else "no such camera"
                self._carry_out(self.router.finish(action, why))
                return
            target = lambda a: self._await_snapshot(a, snap)  # noqa: E731
        else:
            self._carry_out(self.router.finish(action, "not supported"))
            return
        threading.Thread(target=target, args=(action,), name=action.feature,
                         daemon=True).start()

    def _await_snapshot(self, action: PendingAction, snap) -> None:
        if snap.done.wait(SNAPSHOT_TIMEOUT_S):
            error = snap.error
        else:
            snap.finish(f"no frame within {SNAPSHOT_TIMEOUT_S:g} s")
            error = snap.error
        self._carry_out(self.router.finish(action, error, round(time.time(), 3)))

    def _do_reload(self, action: PendingAction) -> None:
        try:
            error = self._reload()
        except Exception as exc:  # noqa: BLE001 - a reload must never take the agent down
            error = f"{type(exc).__name__}: {exc}"
        finally:
            with self._actions_lock:
                self._reloading = False
        if error is None:
            self.publish_discovery()  # the model's name/version/classes may have changed
        self._carry_out(self.router.finish(action, error, round(time.time(), 3)))

    # --- on connect -------------------------------------------------------------------------
    def on_connect(self) -> None:
        """Retained states and settings of every camera, then discovery (or removals)."""
        for out in self.router.all_state_messages():
            self._publish(out)
        self.publish_discovery()

    def publish_discovery(self) -> None:
        """Discovery configs (or, disabled, the same topics empty), and empty configs for
        entities published earlier by this process but gone now (a class the new model
        lacks)."""
        with self._discovery_lock:
            msgs = homeassistant.discovery(self.cfg.mqtt.prefix, self.cfg.device_id,
                                           list(self.cameras()), __version__, self.ha)
            stale = homeassistant.stale_topics(self._discovery_topics, msgs)
            for msg in msgs:
                self.comms.publish_retained(msg.topic, msg.payload)
            for topic in stale:
                self.comms.publish_retained(topic, "")
            self._discovery_topics = [m.topic for m in msgs if not m.is_removal]
