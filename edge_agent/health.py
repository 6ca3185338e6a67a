"""The agent's health: one overall state from per-component reasons.

Each component (``source``, ``inference``, ``mqtt``; later one per camera, e.g.
``source:cam-02``) is either fine or has a reason. The agent is ``online`` when no
component has a reason, else ``degraded`` with every reason joined. A change of the
overall view is logged once, told to systemd (``STATUS=``) and written to the health
file at once, and wakes the main loop, which publishes the status message: it
takes the newest view (``take_change``) after refreshing the MQTT component, so a
view that is already out of date (MQTT just connected) is never published. A retry
that repeats the same reason changes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

from .sdnotify import Notifier

log = logging.getLogger("segedge.health")
ORDER = ("source", "inference", "mqtt")  # reasons are listed in this order, then by name


@dataclass(frozen=True)
class HealthView:
    state: str  # online | degraded | offline
    reason: Optional[str]
    components: Dict[str, str] = field(default_factory=dict)
    since: float = field(default=0.0, compare=False)  # Unix seconds of the change

    def status_text(self) -> str:
        """The sd_notify STATUS= line."""
        return f"{self.state}: {self.reason}" if self.reason else self.state


def _rank(name: str) -> tuple:
    base = name.split(":", 1)[0]
    return (ORDER.index(base) if base in ORDER else len(ORDER), name)


def summarize(reasons: Mapping[str, str]) -> HealthView:
    """Pure: the overall view of the components' reasons."""
    names = sorted(reasons, key=_rank)
    if not names:
        return HealthView("online", None, {})
    return HealthView("degraded", "; ".join(reasons[n] for n in names),
                      {n: reasons[n] for n in names})


def write_health(path: str, data: Dict[str, Any]) -> None:
    """Write ``data`` to ``path`` via a temp file + rename; never raises."""
    if not path:
        return
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".health-", dir=str(target.parent))
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, sort_keys=True)
            handle.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except OSError:
        pass


class Health:
    """The one owner of the agent's state; thread-safe (capture, MQTT and main threads)."""

    def __init__(self, path: str, notifier: Optional[Notifier] = None,
                 facts: Optional[Callable[[], Dict[str, Any]]] = None,
                 wake: Optional[threading.Event] = None) -> None:
        """``facts``: the health file's other keys (model, mqtt, masks_published, ...);
        ``wake``: set on every change, so the main loop publishes it without waiting."""
        self.path = path
        self.notifier = notifier or Notifier()
        self.facts = facts or dict
        self.wake = wake or threading.Event()
        self._lock = threading.Lock()
        self._reasons: Dict[str, str] = {}
        self._view = HealthView("online", None, {}, time.time())
        self._taken: Optional[HealthView] = None  # the view last handed to take_change
        self._final: Optional[HealthView] = None  # set on shutdown: offline

    def set(self, component: str, reason: Optional[str]) -> bool:
        """Record ``component``'s reason (None = fine). True when the overall view changed."""
        with self._lock:
            if self._final is not None:
                return False
            if reason:
                self._reasons[component] = reason
            else:
                self._reasons.pop(component, None)
            view = summarize(self._reasons)
            if view == self._view:
                return False
            view = replace(view, since=time.time())
            self._view = view
            if view.state == "degraded":
                log.warning("status degraded: %s", view.reason)
            else:
                log.info("status online")
            self._write(view)
        self.wake.set()
        self.notifier.status(view.status_text())
        return True

    def take_change(self) -> Optional[HealthView]:
        """The current view if it differs from the one this returned last, else None."""
        with self._lock:
            if self._final is not None or self._view == self._taken:
                return None
            self._taken = self._view
            return self._view

    def view(self) -> HealthView:
        with self._lock:
            return self._final or self._view

    @property
    def state(self) -> str:
        return self.view().state

    def reason(self, component: str) -> Optional[str]:
        with self._lock:
            return self._reasons.get(component)

    def refresh(self) -> None:
        """Rewrite the health file (fresh ``ts`` and facts) without a state change."""
        with self._lock:
            self._write(self._final or self._view)

    def stop(self, reason: str = "shutdown") -> None:
        """Final state: offline. Later ``set`` calls are ignored."""
        with self._lock:
            self._final = HealthView("offline", reason, {})
            self._write(self._final)

    def _write(self, view: HealthView) -> None:
        data = dict(self.facts())
        data.update({"state": view.state, "ts": round(time.time(), 3), "reason": view.reason,
                     "components": dict(view.components), "pid": os.getpid()})
        write_health(self.path, data)
