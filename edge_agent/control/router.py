"""Routing commands for one agent: limiter -> response topic -> parse -> apply -> the
messages to publish.

No I/O: the MQTT client hands every message on its command subscriptions to
``CommandRouter.handle`` and publishes what comes back (see docs/integrations.md,
"Wiring plan"). The rules themselves live in edge_agent.control.rules.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, Dict, Optional, Tuple

from edge_agent.control.rules import (
    FEATURES,
    SETTINGS,
    Command,
    CommandState,
    Reply,
    features_for,
    finish_action,
    one_line,
    parse_command,
    settings_topic,
    split_topic,
    state_topic,
    subscription,
)
from edge_agent.health.pacing import LogThrottle, TokenBucket
from edge_agent.protocol.topics import reply_topic_problem


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


RATE_LIMITED = "rate_limited"  # Handled.count: dropped by the token bucket
REPLY_TOPIC_REFUSED = "reply_topic_refused"  # Handled.count: a response topic not the asker's


@dataclass(frozen=True)
class Handled:
    """What one incoming message led to."""

    reply: Optional[Reply] = None  # None: not handled (rate limited, refused response
    # topic, not a command topic)
    outgoing: Tuple[Outgoing, ...] = ()
    action: Optional[PendingAction] = None
    log: Optional[str] = None  # one line for the agent's log, when there is one to say
    commit: Optional[Tuple[str, CommandState]] = None  # (id, new state) to apply
    count: Optional[str] = None  # RATE_LIMITED or REPLY_TOPIC_REFUSED: for the stats


class CommandRouter:
    """Limiter -> response topic -> parse -> apply -> state and reply messages, for one
    agent.

    The single owner of every camera's CommandState; pipelines read ``state(id)`` (a
    frozen object, swapped whole). ``decide`` does no I/O and changes nothing: its
    ``Handled.commit`` is applied with ``commit`` once the caller has done what must
    come first (persisting), so a command is applied, persisted, reported and answered
    as one step or not at all. ``handle`` = ``decide`` + ``commit``.
    """

    def __init__(self, prefix: str, agent_id: str, states: Dict[str, CommandState],
                 bucket: Optional[TokenBucket] = None, log_every_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.prefix = prefix
        self.agent_id = agent_id
        self._states = dict(states)
        self.bucket = bucket or TokenBucket(clock=clock)
        self._clock = clock
        self._flood_note = LogThrottle(log_every_s, clock=clock)
        self._dropped_logged = 0
        self._refusal_note = LogThrottle(log_every_s, clock=clock)  # per addressed id

    @property
    def camera_ids(self) -> Tuple[str, ...]:
        return tuple(self._states)

    def state(self, camera_id: str) -> CommandState:
        return self._states[camera_id]

    def subscriptions(self) -> Tuple[str, ...]:
        ids = dict.fromkeys((self.agent_id,) + self.camera_ids)
        return tuple(subscription(self.prefix, i) for i in ids)

    def state_messages(self, camera_id: str,
                       state: Optional[CommandState] = None) -> Tuple[Outgoing, ...]:
        """The retained state topics and settings of one camera (on connect, on change)."""
        state = state or self._states[camera_id]
        out = [Outgoing(t, p, retain=True)
               for t, p in state.state_messages(self.prefix, camera_id).items()]
        out.append(Outgoing(settings_topic(self.prefix, camera_id),
                            state.settings_json(camera_id), retain=True))
        return tuple(out)

    def all_state_messages(self) -> Tuple[Outgoing, ...]:
        return tuple(m for cid in self._states for m in self.state_messages(cid))

    def _flood_log(self) -> Optional[str]:
        if not self._flood_note.allow():
            return None
        new = self.bucket.dropped - self._dropped_logged
        self._dropped_logged = self.bucket.dropped
        return (f"commands: over {self.bucket.rate:g}/s (burst {self.bucket.burst:g}): "
                f"dropping; {new} dropped since the last note, {self.bucket.dropped} in all")

    def _reply_refused_log(self, target: str, problem: str) -> Optional[str]:
        """One line per addressed id per ``log_every_s``."""
        if not self._refusal_note.allow(target):
            return None
        return f"commands: a command to {one_line(target, 60)} refused, not applied: {problem}"

    def _reply_out(self, reply: Reply, response_topic: Optional[str],
                   correlation_data: Optional[bytes]) -> Tuple[Outgoing, ...]:
        if not response_topic:
            return ()
        return (Outgoing(response_topic, reply.to_json(), retain=False,
                         correlation_data=correlation_data),)

    def _rate_limited(self, topic: str, response_topic: Optional[str],
                      correlation_data: Optional[bytes], ts: float) -> Handled:
        """Dropped unread by the token bucket: counted, and answered when the command
        asked for a reply on its own reply tree (never parsed, never applied)."""
        log = self._flood_log()
        split = split_topic(self.prefix, topic)
        if not response_topic or split is None \
                or reply_topic_problem(self.prefix, split[0], response_topic) is not None:
            return Handled(log=log, count=RATE_LIMITED)
        target, suffix = split
        feature = suffix.split("/")[0]
        reply = Reply(target, feature if feature in FEATURES else None, "refused",
                      f"{RATE_LIMITED}: over {self.bucket.rate:g} commands/s (burst "
                      f"{self.bucket.burst:g}); not applied, send it again later", ts=ts)
        return Handled(reply, self._reply_out(reply, response_topic, correlation_data),
                       log=log, count=RATE_LIMITED)

    def decide(self, topic: str, payload: bytes, retained: bool = False,
               response_topic: Optional[str] = None, correlation_data: Optional[bytes] = None,
               ts: float = 0.0, size: Optional[int] = None) -> Handled:
        """One incoming message: what to do, changing nothing. Never raises on any topic
        or payload. ``size``: the payload's size when ``payload`` was cut short."""
        if not self.bucket.allow():
            return self._rate_limited(topic, response_topic, correlation_data, ts)
        split = split_topic(self.prefix, topic)
        if split is None:
            return Handled(log=f"commands: ignored message on '{one_line(topic, 120)}'")
        target, suffix = split
        if response_topic is not None:  # answers go only under the addressed id's tree
            problem = reply_topic_problem(self.prefix, target, response_topic)
            if problem is not None:
                return Handled(log=self._reply_refused_log(target, problem),
                               count=REPLY_TOPIC_REFUSED)
        allowed = features_for(target, self.agent_id, self.camera_ids)
        command = parse_command(suffix, payload, retained=retained, allowed=allowed,
                                size=size)
        state = self._states.get(target, CommandState())
        new, reply = state.apply(command, target, ts=ts)
        out = self._reply_out(reply, response_topic, correlation_data)
        log = None if reply.accepted else reply.log_line()
        if isinstance(command, Command) and command.is_action:
            pending = PendingAction(target, command.feature, reply, response_topic,
                                    correlation_data)
            return Handled(reply, (), pending, log)
        commit = None
        if target in self._states:
            commit = (target, new)
            if reply.feature in SETTINGS:  # 3.1.1: the state is the reply, also on refusal
                out = (Outgoing(state_topic(self.prefix, target, reply.feature),
                                new.state_payload(reply.feature), retain=True),
                       Outgoing(settings_topic(self.prefix, target), new.settings_json(target),
                                retain=True)) + out
        return Handled(reply, out, None, log, commit)

    def commit(self, handled: Handled) -> None:
        """Apply a decided state change (after it was persisted, when it is)."""
        if handled.commit is not None:
            target, new = handled.commit
            self._states[target] = new

    def unsaved(self, handled: Handled, error: str, response_topic: Optional[str],
                correlation_data: Optional[bytes]) -> Handled:
        """A decided change that could not be persisted: refused, the state unchanged
        (its retained state republished: under 3.1.1 the state is the reply)."""
        old = handled.reply
        assert old is not None and handled.commit is not None
        target = handled.commit[0]
        reply = replace(old, result="refused", value=None, changed=False,
                        reason=f"{old.feature}: not applied: the state file cannot be "
                               f"written ({one_line(error, 150)})")
        state = self._states[target]
        out = (Outgoing(state_topic(self.prefix, target, old.feature or ""),
                        state.state_payload(old.feature or ""), retain=True),
               Outgoing(settings_topic(self.prefix, target), state.settings_json(target),
                        retain=True)) if old.feature in SETTINGS else ()
        return Handled(reply, out + self._reply_out(reply, response_topic, correlation_data),
                       None, reply.log_line())

    def handle(self, topic: str, payload: bytes, retained: bool = False,
               response_topic: Optional[str] = None, correlation_data: Optional[bytes] = None,
               ts: float = 0.0) -> Handled:
        """``decide`` and ``commit`` at once (no persistence): for callers without I/O."""
        handled = self.decide(topic, payload, retained, response_topic, correlation_data, ts)
        self.commit(handled)
        return handled

    def finish(self, action: PendingAction, error: Optional[str],
               ts: Optional[float] = None) -> Handled:
        """The reply of an action once its hook ran (``error`` None = done)."""
        reply = finish_action(action.reply, error, ts)
        return Handled(reply, self._reply_out(reply, action.response_topic,
                                              action.correlation_data),
                       None, None if reply.accepted else reply.log_line())
