"""Liveness checks, run from the main loop; a fatal finding ends the process.

The watchdog is what systemd's ``WatchdogSec=`` trusts: it pings only while every
thread the agent needs is alive and inference makes progress. A dead pipeline or
capture thread, a dead MQTT network thread or requests stuck in flight are internal
errors that a restart fixes: ``check`` returns the reason and the agent exits 1.
A camera that stops delivering is not fatal (the capture reconnects): here it only
becomes a health reason, within ``stall_timeout_s``.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional, Protocol, Sequence

from edge_agent.health.sdnotify import Notifier

INFER_STALL_MIN_S = 10.0  # requests in flight and no result for this long: exit non-zero


def infer_stall_s(watchdog_interval_s: float) -> float:
    """How long in-flight requests may go without a result before the agent gives up."""
    return max(INFER_STALL_MIN_S, 2.0 * (watchdog_interval_s or 0.0))


class _Pipeline(Protocol):
    def alive(self) -> bool: ...
    def inflight(self) -> int: ...
    def stalled_for(self, now: float) -> float: ...


class _Capture(Protocol):
    def is_alive(self) -> bool: ...
    def done(self) -> bool: ...
    def check_stall(self, now: float) -> None: ...


class Watchdog:
    def __init__(self, notifier: Notifier, pipeline: _Pipeline,
                 captures: Sequence[_Capture],
                 mqtt_fatal: Callable[[], Optional[str]],
                 threads: Sequence[threading.Thread] = ()) -> None:
        """``captures``: one reader per camera; ``threads``: others that must stay alive
        (the frames-in service)."""
        self.notifier = notifier
        self.captures = list(captures)
        self.pipeline, self.mqtt_fatal, self.threads = pipeline, mqtt_fatal, list(threads)
        self.interval = notifier.watchdog_interval_s
        self.stall_s = infer_stall_s(self.interval)
        self._next_ping = 0.0

    def check(self, now: float) -> Optional[str]:
        """One round: the fatal reason, or None (then systemd's watchdog is fed)."""
        if not self.pipeline.alive():
            return "pipeline thread died"
        for capture in self.captures:
            if not capture.is_alive() and not capture.done():
                return f"{getattr(capture, 'name', 'capture')} thread died"
        for thread in self.threads:
            if not thread.is_alive():
                return f"{thread.name} thread died"
        fatal = self.mqtt_fatal()
        if fatal:
            return fatal
        stalled = self.pipeline.stalled_for(now)
        if stalled > self.stall_s:
            return (f"inference stalled: {self.pipeline.inflight()} request(s) in flight, "
                    f"no result for {stalled:.0f}s")
        for capture in self.captures:
            capture.check_stall(now)
        if self.interval and now >= self._next_ping:
            self._next_ping = now + self.interval
            self.notifier.watchdog()
        return None
