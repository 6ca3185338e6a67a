"""The agent's lifecycle: start the parts in order, stop them in reverse; stats on a tick.

Health (``health.py``) owns the state and its reasons, the watchdog (``watchdog.py``)
the liveness checks; this module wires them and publishes what they decide.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Any, Dict, List, Optional

from . import __version__, ovcompat
from .capture import Capture, LatestFrame
from .config import Config
from .control import PAUSED_REASON, Control
from .health import Health
from .homeassistant import CameraInfo
from .inference import Engine
from .messages import Stats, Status
from .mqtt import MqttComms
from .opened import OpenedBundle
from .pipeline import Pipeline
from .sdnotify import Notifier
from .stats import Counters, LatencyWindow, ProcessUsage
from .watchdog import Watchdog

log = logging.getLogger("segedge.agent")
WAITING_FOR_FRAME = "source: waiting for first frame"
TICK_S = 0.2


class Agent:
    def __init__(self, cfg: Config, stop: threading.Event,
                 notifier: Optional[Notifier] = None,
                 opened: Optional[OpenedBundle] = None) -> None:
        self.cfg, self.stop = cfg, stop
        self.notifier = notifier or Notifier()
        self.session = uuid.uuid4().hex[:12]
        self.counters = Counters()
        self.latency = LatencyWindow()
        self.usage = ProcessUsage()
        self.slot = LatestFrame()
        self.started_mono = time.monotonic()
        self._seq_lock = threading.Lock()
        self._stats_seq = 0
        opened = opened or OpenedBundle.open(cfg.model.bundle, cfg.model.target)  # BundleError
        self.engine = Engine(cfg.model, opened)
        self.wake = threading.Event()  # a health change or a new connection: publish now
        self.health = Health(cfg.health_file, self.notifier, facts=self._facts, wake=self.wake)
        self.comms: Optional[MqttComms] = None
        self.pipeline: Optional[Pipeline] = None
        self.capture: Optional[Capture] = None
        self.control: Optional[Control] = None
        self._republish = False  # the model changed (reload): publish the status again

    # --- what the status and the health file say ------------------------------------
    def _status(self, state: str, reason: Optional[str], ts: float = 0.0) -> Status:
        """``seq`` and ``connection`` are stamped by MqttComms as it sends."""
        return Status(device_id=self.cfg.device_id, state=state,
                      ts=round(ts or time.time(), 3),
                      agent_version=__version__, model=self.engine.info,
                      device=self.engine.device or None, reason=reason,
                      device_errors=dict(self.engine.failures),
                      runtime=ovcompat.runtime_version(), pid=os.getpid(),
                      session=self.session)

    def _will(self, connection: int) -> Status:
        return self._status("offline", "connection lost")

    def _publish_status(self, now: float) -> None:
        """Once per tick: the newest health view, and the current one after each connect."""
        self.health.set("mqtt", self.comms.problem(now))
        announce = self.comms.take_announce()
        view = self.health.take_change()
        republish, self._republish = self._republish, False
        if view is None and (announce or republish):
            view = self.health.view()  # a new connection hears the current state
        if view is not None:
            self.comms.publish_status(self._status(view.state, view.reason, view.since))
        if announce and self.control:
            self.control.on_connect()  # retained command states, discovery

    def _facts(self) -> Dict[str, Any]:
        info = self.engine.info
        comms = self.comms
        return {"model": {"name": info.name, "version": info.version,
                          "precision": info.precision},
                "device": self.engine.device or None,
                "mqtt": comms.state() if comms else {"connected": False, "broker": None,
                                                      "reason": None},
                "masks_published": self.pipeline.masks_sent if self.pipeline else 0,
                "session": self.session}

    # --- lifecycle ------------------------------------------------------------------
    def run(self) -> int:
        engine = self.engine
        engine.load()  # InferenceError when no device works
        engine.warmup()
        if engine.failures:
            log.warning("running on %s after failures: %s", engine.device,
                        "; ".join(f"{d}: {r}" for d, r in engine.failures.items()))
        self.comms = MqttComms(self.cfg.mqtt, self.cfg.device_id, self._will,
                               on_connected=self.wake.set)
        # not online before the source delivers: capture's first frames clear this
        self.health.set("source", WAITING_FOR_FRAME)
        self.health.set("mqtt", self.comms.problem())  # not delivering before connected
        self.control = Control(self.cfg, self.comms, self.stop, self._cameras, self.reload,
                               self._on_paused)
        self.control.start()  # subscribes before the connection exists: renewed on connect
        self.comms.start()
        device_id = self.cfg.device_id
        self.pipeline = Pipeline(engine, self.cfg.output, device_id, self.slot,
                                 self.counters, self.latency, self.stop, self.comms.publish_mask,
                                 self.comms.publish_frame,
                                 max_age_s=self.cfg.source.stall_timeout_s,
                                 settings=lambda: self.control.state(device_id),
                                 send_overlay=self.comms.publish_overlay)
        self.control.pipelines[device_id] = self.pipeline
        self.pipeline.start()
        self.capture = Capture(self.cfg.source, self.slot, self.stop,
                               on_state=lambda reason: self.health.set("source", reason),
                               on_frame=self._on_frame,
                               on_stale=lambda: self.counters.add("stale"))
        self.capture.start()
        watchdog = Watchdog(self.notifier, self.pipeline, self.capture, self.comms.fatal)
        self.notifier.ready(f"running on {engine.device}")
        code = self._loop(watchdog)
        self._shutdown()
        return code

    # --- commands -------------------------------------------------------------------
    def _on_paused(self, camera_id: str, paused: bool) -> None:
        """Paused: no masks flow, so the agent is not ``online`` (docs/agent.md)."""
        self.health.set("commands", PAUSED_REASON if paused else None)

    def _cameras(self) -> List[CameraInfo]:
        info = self.engine.info
        return [CameraInfo(self.cfg.device_id, tuple(self.engine.classes), info.name,
                           info.version, info.precision)]

    def reload(self) -> Optional[str]:
        """The ``reload`` command (its own thread): open and verify the configured bundle,
        compile and warm up a new engine, swap it in. None, or why the old one keeps
        serving. The MQTT connection is untouched."""
        t0 = time.monotonic()
        try:
            opened = OpenedBundle.open(self.cfg.model.bundle, self.cfg.model.target)
            engine = Engine(self.cfg.model, opened)
            engine.load()
            engine.warmup()
        except Exception as exc:  # noqa: BLE001 - BundleError, InferenceError, OpenVINO's
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            log.warning("reload refused, %s %s keeps serving: %s", self.engine.info.name,
                        self.engine.info.version, reason)
            return reason
        if not self.pipeline.swap_engine(engine).wait(30.0):
            return "the inference thread did not take the new model within 30 s"
        self.engine = engine
        self._republish = True
        self.wake.set()
        log.info("reloaded %s %s (%s) on %s in %.1fs", engine.info.name, engine.info.version,
                 engine.info.precision, engine.device, time.monotonic() - t0)
        return None

    def _on_frame(self, dropped: bool) -> None:
        self.counters.add("captured")
        if dropped:
            self.counters.add("dropped")

    def _loop(self, watchdog: Watchdog) -> int:
        interval = self.cfg.output.stats_interval_s
        next_stats = time.monotonic() + interval
        while not self.stop.is_set():
            self.wake.wait(TICK_S)
            self.wake.clear()
            if self.stop.is_set():
                break
            now = time.monotonic()
            fatal = watchdog.check(now)
            if fatal:
                log.error("%s; exiting", fatal)
                return 1
            if self.capture.done() and not self.capture.is_alive():
                log.info("source finished; stopping")
                self.stop.wait(0.5)  # let the last frames through
                break
            self._publish_status(now)
            self.comms.pump()
            if now >= next_stats:
                next_stats = now + interval
                self.publish_stats(interval)
        return 0

    def publish_stats(self, interval: float) -> Stats:
        rates = self.counters.rates()
        frames = self.counters.snapshot()
        frames["mqtt_dropped"] = self.comms.dropped
        frames["spool_dropped"] = self.comms.spool.dropped
        with self._seq_lock:
            self._stats_seq += 1
            seq = self._stats_seq
        stats = Stats(
            device_id=self.cfg.device_id, ts=round(time.time(), 3),
            uptime_s=round(time.monotonic() - self.started_mono, 1), interval_s=interval,
            fps={"capture": round(rates["captured"], 2), "inference": round(rates["inferred"], 2),
                 "publish": round(rates["published"], 2)},
            latency_ms=self.latency.take(), frames=frames,
            queues={"capture": self.slot.depth(), "inflight": self.pipeline.inflight(),
                    "reorder": len(self.pipeline.reorder), "mqtt_outbound": len(self.comms.queue),
                    "mqtt_spool": len(self.comms.spool)},
            device=self.engine.device, precision=self.engine.info.precision,
            inference_precision=self.engine.inference_precision,
            num_requests=self.engine.num_requests, model=self.engine.info,
            process=self.usage.sample(), state=self.health.state, session=self.session,
            seq=seq)
        self.comms.publish_stats(stats.to_json())
        self.health.refresh()
        log.debug("stats %s", stats.fps)
        return stats

    def _shutdown(self) -> None:
        log.info("stopping")
        self.notifier.stopping()
        self.stop.set()
        if self.capture:
            self.capture.join(3.0)
        if self.pipeline:
            self.pipeline.join(5.0)
        if self.control:
            self.control.join(1.0)
        if self.comms:
            self.comms.stop(self._status("offline", "shutdown"))
        self.health.stop("shutdown")
        log.info("stopped")
