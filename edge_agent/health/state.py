"""The agent's health: one overall state from per-component reasons, and one per camera.

Each component (``source``, ``commands``, ``inference``, ``mqtt``) is either fine or has
a reason. Shared components (``mqtt``, ``inference``) count for every camera; a
camera's own (``source``, ``commands``: paused) count for that camera and, for a
configured camera, for the agent, named ``source:<camera>`` with the reason prefixed
by the camera id. The agent (and each camera) is ``online`` when none of its
components has a reason, else ``degraded`` with every reason joined. Cameras made at
run time for frames-in senders have views of their own but do not count for the
agent: a sender that goes quiet is its camera's news, not the device's. With one camera
whose id is the agent's (the single-camera form) the two views are one. A change of the
overall view is told to systemd (``STATUS=``) and written to the health file at once,
and wakes the main loop, which publishes (and logs, once) the status message: it
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
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from edge_agent.health.sdnotify import Notifier

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


class HealthFile:
    """The one writer of the health file: a thread writes the newest snapshot.

    Callers (capture, MQTT, main threads) only hand over a snapshot under a short lock
    and never wait on the disk: a slow SD card delays the file, not the capture threads
    or the watchdog ping. ``facts`` (model, MQTT, masks) is called on the writer thread,
    outside every Health lock. Snapshots that arrive while one is being written are
    coalesced: the file always ends at the newest.
    """

    def __init__(self, path: str, facts: Callable[[], Dict[str, Any]]) -> None:
        self.path, self.facts = path, facts
        self._cond = threading.Condition()
        self._pending: Optional[Dict[str, Any]] = None
        self._submitted = self._written = 0  # for flush()
        self._closed = False
        self._thread: Optional[threading.Thread] = None

    def submit(self, snapshot: Dict[str, Any]) -> None:
        if not self.path:
            return
        with self._cond:
            if self._closed:
                return
            self._pending = snapshot
            self._submitted += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="health-file",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                snapshot, self._pending = self._pending, None
                upto = self._submitted
            if snapshot is None:
                return  # closed and nothing left
            self._write(snapshot)
            with self._cond:
                self._written = upto
                self._cond.notify_all()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until what was submitted so far is on disk (tests, diagnostics)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._submitted
            while self._written < target and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _write(self, snapshot: Dict[str, Any]) -> None:
        data = dict(self.facts())
        data.update(snapshot)
        write_health(self.path, data)

    def close(self, final: Dict[str, Any], timeout: float = 2.0) -> None:
        """Stop the writer (after what it holds) and write ``final`` last."""
        with self._cond:
            self._closed = True
            self._pending = None
            thread = self._thread
            self._cond.notify()
        if thread is not None:
            thread.join(timeout)
        if self.path:
            self._write(final)


Scope = Optional[str]  # None: shared by every camera; else a camera id


class Health:
    """The agent's health state from components' reasons; thread-safe (capture, MQTT,
    commands and main threads). Its lock guards only in-memory state: the health file
    is written by ``HealthFile``'s thread and ``facts`` is never called under it."""

    def __init__(self, path: str, notifier: Optional[Notifier] = None,
                 facts: Optional[Callable[[], Dict[str, Any]]] = None,
                 wake: Optional[threading.Event] = None, agent_id: str = "") -> None:
        """``facts``: the health file's other keys (model, mqtt, masks_published, ...);
        ``wake``: set on every change, so the main loop publishes it without waiting;
        ``agent_id``: components of the camera with this id are the agent's own."""
        self.path = path
        self.notifier = notifier or Notifier()
        self.file = HealthFile(path, facts or dict)
        self.wake = wake or threading.Event()
        self.agent_id = agent_id
        self._lock = threading.Lock()
        self._reasons: Dict[Tuple[Scope, str], str] = {}
        self._cameras: Dict[str, bool] = {}  # camera id -> counts for the agent
        self._view = HealthView("online", None, {}, time.time())
        self._camera_views: Dict[str, HealthView] = {}
        self._taken: Optional[HealthView] = None  # the view last handed to take_change
        self._camera_taken: Dict[str, HealthView] = {}
        self._final: Optional[HealthView] = None  # set on shutdown: offline

    # --- cameras --------------------------------------------------------------------
    def add_camera(self, camera_id: str, counted: bool = True) -> None:
        """A camera with a view of its own (``counted``: it counts for the agent)."""
        if camera_id == self.agent_id:
            return
        with self._lock:
            self._cameras[camera_id] = counted
            self._camera_views[camera_id] = replace(self._camera_view(camera_id),
                                                    since=time.time())
        self._changed()

    def remove_camera(self, camera_id: str) -> None:
        with self._lock:
            self._cameras.pop(camera_id, None)
            self._camera_views.pop(camera_id, None)
            self._camera_taken.pop(camera_id, None)
            for key in [k for k in self._reasons if k[0] == camera_id]:
                del self._reasons[key]
        if not self._changed():
            self.refresh()

    def _scope(self, camera: Optional[str]) -> Scope:
        return None if camera is None or camera == self.agent_id else camera

    # --- views (pure, under the lock) -----------------------------------------------
    def _agent_view(self) -> HealthView:
        named: Dict[str, str] = {}
        for (scope, component), reason in self._reasons.items():
            if scope is None:
                named[component] = reason
            elif self._cameras.get(scope):
                named[f"{component}:{scope}"] = f"{scope}: {reason}"
        return summarize(named)

    def _camera_view(self, camera_id: str) -> HealthView:
        return summarize({component: reason for (scope, component), reason
                          in self._reasons.items() if scope in (None, camera_id)})

    # --- changes --------------------------------------------------------------------
    def set(self, component: str, reason: Optional[str],
            camera: Optional[str] = None) -> bool:
        """Record ``component``'s reason (None = fine), shared or of ``camera``. True when
        the agent's view or that camera's changed."""
        scope = self._scope(camera)
        with self._lock:
            if self._final is not None or (scope is not None and scope not in self._cameras) \
                    or self._reasons.get((scope, component)) == (reason or None):
                return False  # gone, or no change (the main loop sets mqtt every tick)
            if reason:
                self._reasons[(scope, component)] = reason
            else:
                self._reasons.pop((scope, component), None)
        return self._changed()

    def _changed(self) -> bool:
        """Recompute every view; log, notify and write what changed."""
        changed_agent: Optional[HealthView] = None
        changed_cameras: List[Tuple[str, HealthView]] = []
        with self._lock:
            if self._final is not None:
                return False
            now = time.time()
            view = self._agent_view()
            if view != self._view:
                changed_agent = self._view = replace(view, since=now)
            for camera_id in self._cameras:
                cview = self._camera_view(camera_id)
                if cview != self._camera_views.get(camera_id):
                    self._camera_views[camera_id] = replace(cview, since=now)
                    changed_cameras.append((camera_id, self._camera_views[camera_id]))
            snapshot = (self._snapshot(self._view)
                        if changed_agent is not None or changed_cameras else None)
        if snapshot is None:
            return False
        self.file.submit(snapshot)
        self.wake.set()
        if changed_agent is not None:
            self.notifier.status(changed_agent.status_text())
        return True

    def take_change(self) -> Optional[HealthView]:
        """The agent's view if it differs from the one this returned last, else None."""
        with self._lock:
            if self._final is not None or self._view == self._taken:
                return None
            self._taken = view = self._view
        if view.state == "degraded":  # logged as published: a burst of changes is one line
            log.warning("status degraded: %s", view.reason)
        else:
            log.info("status online")
        return view

    def take_camera_changes(self) -> Dict[str, HealthView]:
        """Each camera's view that differs from the one handed out last for it."""
        with self._lock:
            if self._final is not None:
                return {}
            out = {cid: v for cid, v in self._camera_views.items()
                   if self._camera_taken.get(cid) != v}
            self._camera_taken.update(out)
            quiet = {cid for cid in out if self._cameras.get(cid)}  # in the agent's line
        for cid, view in out.items():
            if cid not in quiet:
                log.info("camera %s %s%s", cid, view.state,
                         f": {view.reason}" if view.reason else "")
        return out

    def view(self, camera: Optional[str] = None) -> HealthView:
        """The agent's view, or a camera's (shared components included)."""
        scope = self._scope(camera)
        with self._lock:
            if self._final is not None:
                return self._final
            if scope is None:
                return self._view
            return self._camera_views.get(scope) or self._camera_view(scope)

    @property
    def state(self) -> str:
        return self.view().state

    def refresh(self) -> None:
        """Rewrite the health file (fresh ``ts`` and facts) without a state change."""
        with self._lock:
            if self._final is not None:
                return
            snapshot = self._snapshot(self._view)
        self.file.submit(snapshot)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the health file shows every change made so far."""
        return self.file.flush(timeout)

    def stop(self, reason: str = "shutdown") -> None:
        """Final state: offline, written last. Later ``set`` calls are ignored."""
        with self._lock:
            self._final = HealthView("offline", reason, {})
            snapshot = self._snapshot(self._final)
        self.file.close(snapshot)

    def _snapshot(self, view: HealthView) -> Dict[str, Any]:
        """The health file's state keys (under the lock; the writer adds the facts)."""
        data: Dict[str, Any] = {"state": view.state, "ts": round(time.time(), 3),
                                "reason": view.reason, "components": dict(view.components),
                                "pid": os.getpid()}
        if self._cameras:
            final = self._final
            data["cameras"] = {
                cid: {"state": (final or v).state, "reason": (final or v).reason,
                      "counted": self._cameras[cid]}
                for cid, v in self._camera_views.items()}
        return data
