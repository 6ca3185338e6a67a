"""Routing commands for one agent: limiter -> parse -> apply -> the messages to publish.

No I/O: the MQTT client hands every message on its command subscriptions to
``CommandRouter.handle`` and publishes what comes back (see docs/integrations.md,
"Wiring plan"). The rules themselves live in edge_agent.control.rules.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

from edge_agent.control.rules import (
    SETTINGS,
    Command,
    CommandState,
    Reply,
    TokenBucket,
    features_for,
    finish_action,
    one_line,
    parse_command,
    settings_topic,
    split_topic,
    state_topic,
    subscription,
)


@dataclass(frozen=True)
class Outgoing:
    """A message to publish (the router decides what, the MQTT client does the I/O)."""

    topic: str
    payload: str
    retain: bool
    qos: int = 1
    correlation_data: Optional[bytes] = None  # MQTT 5 property, for replies


@dataclass(frozen=True)
class PendingAction:
    """An accepted snapshot/reload: run its hook, then ``CommandRouter.finish``."""

    target_id: str
    feature: str
    reply: Reply
    response_topic: Optional[str] = None
    correlation_data: Optional[bytes] = None


@dataclass(frozen=True)
class Handled:
    """What one incoming message led to."""

    reply: Optional[Reply] = None  # None: dropped by the limiter or not a command topic
    outgoing: Tuple[Outgoing, ...] = ()
    action: Optional[PendingAction] = None
    log: Optional[str] = None  # one line for the agent's log, when there is one to say


class CommandRouter:
    """Limiter -> parse -> apply -> state and reply messages, for one agent.

    The single owner of every camera's CommandState; pipelines read ``state(id)`` (a
    frozen object, swapped whole). Called on the MQTT network thread; does no I/O.
    """

    def __init__(self, prefix: str, agent_id: str, states: Dict[str, CommandState],
                 bucket: Optional[TokenBucket] = None, log_every_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.prefix = prefix
        self.agent_id = agent_id
        self._states = dict(states)
        self.bucket = bucket or TokenBucket(clock=clock)
        self._clock = clock
        self._log_every_s = log_every_s
        self._last_flood_log: Optional[float] = None
        self._dropped_logged = 0

    @property
    def camera_ids(self) -> Tuple[str, ...]:
        return tuple(self._states)

    def state(self, camera_id: str) -> CommandState:
        return self._states[camera_id]

    def subscriptions(self) -> Tuple[str, ...]:
        ids = dict.fromkeys((self.agent_id,) + self.camera_ids)
        return tuple(subscription(self.prefix, i) for i in ids)

    def state_messages(self, camera_id: str) -> Tuple[Outgoing, ...]:
        """The retained state topics and settings of one camera (on connect, on change)."""
        state = self._states[camera_id]
        out = [Outgoing(t, p, retain=True)
               for t, p in state.state_messages(self.prefix, camera_id).items()]
        out.append(Outgoing(settings_topic(self.prefix, camera_id),
                            state.settings_json(camera_id), retain=True))
        return tuple(out)

    def all_state_messages(self) -> Tuple[Outgoing, ...]:
        return tuple(m for cid in self._states for m in self.state_messages(cid))

    def _flood_log(self) -> Optional[str]:
        now = self._clock()
        if self._last_flood_log is not None and now - self._last_flood_log < self._log_every_s:
            return None
        self._last_flood_log = now
        new = self.bucket.dropped - self._dropped_logged
        self._dropped_logged = self.bucket.dropped
        return (f"commands: over {self.bucket.rate:g}/s (burst {self.bucket.burst:g}): "
                f"dropping; {new} dropped since the last note, {self.bucket.dropped} in all")

    def _reply_out(self, reply: Reply, response_topic: Optional[str],
                   correlation_data: Optional[bytes]) -> Tuple[Outgoing, ...]:
        if not response_topic:
            return ()
        return (Outgoing(response_topic, reply.to_json(), retain=False,
                         correlation_data=correlation_data),)

    def handle(self, topic: str, payload: bytes, retained: bool = False,
               response_topic: Optional[str] = None, correlation_data: Optional[bytes] = None,
               ts: float = 0.0) -> Handled:
        """One incoming message. Never raises on any topic or payload."""
        if not self.bucket.allow():
            return Handled(log=self._flood_log())
        split = split_topic(self.prefix, topic)
        if split is None:
            return Handled(log=f"commands: ignored message on '{one_line(topic, 120)}'")
        target, suffix = split
        allowed = features_for(target, self.agent_id, self.camera_ids)
        command = parse_command(suffix, payload, retained=retained, allowed=allowed)
        state = self._states.get(target, CommandState())
        new, reply = state.apply(command, target, ts=ts)
        out = self._reply_out(reply, response_topic, correlation_data)
        log = None if reply.accepted else reply.log_line()
        if isinstance(command, Command) and command.is_action:
            pending = PendingAction(target, command.feature, reply, response_topic,
                                    correlation_data)
            return Handled(reply, (), pending, log)
        if target in self._states:
            self._states[target] = new
            if reply.feature in SETTINGS:  # 3.1.1: the state is the reply, also on refusal
                value = new.state_payload(reply.feature)
                out = (Outgoing(state_topic(self.prefix, target, reply.feature), value,
                                retain=True),
                       Outgoing(settings_topic(self.prefix, target), new.settings_json(target),
                                retain=True)) + out
        return Handled(reply, out, None, log)

    def finish(self, action: PendingAction, error: Optional[str],
               ts: Optional[float] = None) -> Handled:
        """The reply of an action once its hook ran (``error`` None = done)."""
        reply = finish_action(action.reply, error, ts)
        return Handled(reply, self._reply_out(reply, action.response_topic,
                                              action.correlation_data),
                       None, None if reply.accepted else reply.log_line())
