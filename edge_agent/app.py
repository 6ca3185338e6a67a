"""The agent: start the parts in order, publish status and stats, stop in reverse."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Dict, Optional

from . import __version__, ovcompat
from .capture import Capture, LatestFrame
from .config import Config
from .health import write_health
from .inference import Engine
from .messages import Stats, Status
from .mqtt import MqttComms
from .pipeline import Pipeline
from .sdnotify import Notifier
from .stats import Counters, LatencyWindow, ProcessUsage

log = logging.getLogger("segedge.agent")
INFER_STALL_MIN_S = 10.0  # requests in flight and no result for this long: exit non-zero
WAITING_FOR_FRAME = "source: waiting for first frame"


def infer_stall_s(watchdog_interval_s: float) -> float:
    """How long in-flight requests may go without a result before the agent gives up."""
    return max(INFER_STALL_MIN_S, 2.0 * (watchdog_interval_s or 0.0))


class Agent:
    def __init__(self, cfg: Config, stop: threading.Event,
                 notifier: Optional[Notifier] = None, opened: Optional[tuple] = None) -> None:
        self.cfg, self.stop = cfg, stop
        self.notifier = notifier or Notifier()
        self.counters = Counters()
        self.latency = LatencyWindow()
        self.usage = ProcessUsage()
        self.slot = LatestFrame()
        self.started_mono = time.monotonic()
        self._lock = threading.Lock()
        self._reasons: Dict[str, str] = {}
        self._state = ""
        self.engine = Engine(cfg.model.bundle, cfg.model, on_result=lambda _u, _o: None,
                             opened=opened)
        self.comms: Optional[MqttComms] = None
        self.pipeline: Optional[Pipeline] = None
        self.capture: Optional[Capture] = None

    # --- status -----------------------------------------------------------------
    def _status(self, state: str, reason: Optional[str]) -> Status:
        return Status(device_id=self.cfg.device_id, state=state, ts=round(time.time(), 3),
                      agent_version=__version__, model=self.engine.info,
                      device=self.engine.device or None, reason=reason,
                      device_errors=dict(self.engine.failures),
                      runtime=ovcompat.runtime_version(), pid=os.getpid())

    def set_reason(self, component: str, ok: bool, reason: str = "") -> None:
        """Record a component's health; publish status when the overall state changes."""
        with self._lock:
            if ok:
                self._reasons.pop(component, None)
            else:
                self._reasons[component] = reason
            state = "degraded" if self._reasons else "online"
            text = "; ".join(self._reasons.values()) or None
            key = f"{state}|{text}"
            if key == self._state:
                return
            self._state = key
            if state == "degraded":
                log.warning("status degraded: %s", text)
            else:
                log.info("status online")
            # under the lock (both non-blocking), so the last state set is the last published
            status = self._status(state, text)
            if self.comms:
                self.comms.publish_status(status.to_json())
            self._health(state, text)
        self.notifier.status(f"{state}{': ' + text if text else ''}")

    def state(self) -> str:
        return self._state.split("|", 1)[0] or "online"

    def _health(self, state: str, reason: Optional[str]) -> None:
        write_health(self.cfg.health_file, {
            "state": state, "ts": round(time.time(), 3), "reason": reason,
            "model": {"name": self.engine.info.name, "version": self.engine.info.version,
                      "precision": self.engine.info.precision},
            "device": self.engine.device or None, "pid": os.getpid()})

    # --- lifecycle --------------------------------------------------------------
    def run(self) -> int:
        engine = self.engine
        engine.load()  # InferenceError when no device works
        engine.warmup()
        if engine.failures:
            log.warning("running on %s after failures: %s", engine.device,
                        "; ".join(f"{d}: {r}" for d, r in engine.failures.items()))
        will = self._status("offline", "connection lost").to_json()
        self.comms = MqttComms(self.cfg.mqtt, self.cfg.device_id, will)
        # not online before the source delivers: capture's first frame clears this
        self.set_reason("source", False, WAITING_FOR_FRAME)
        self.comms.start()
        self.pipeline = Pipeline(engine, self.cfg.output, self.cfg.device_id, self.slot,
                                 self.counters, self.latency, self.stop, self.comms.publish_mask,
                                 self.comms.publish_frame)
        self.pipeline.start()
        self.capture = Capture(self.cfg.source, self.slot, self.stop,
                               on_state=lambda ok, r: self.set_reason("source", ok, r),
                               on_frame=self._on_frame)
        self.capture.start()
        self.notifier.ready(f"running on {engine.device}")
        code = self._loop()
        self._shutdown()
        return code

    def _on_frame(self, dropped: bool) -> None:
        self.counters.add("captured")
        if dropped:
            self.counters.add("dropped")

    def _loop(self) -> int:
        interval = self.cfg.output.stats_interval_s
        next_stats = time.monotonic() + interval
        wd = self.notifier.watchdog_interval_s
        next_wd = time.monotonic()
        stall_s = infer_stall_s(wd)
        last_inferred, progress_mono = -1, time.monotonic()
        while not self.stop.wait(0.2):
            now = time.monotonic()
            if not self.pipeline.alive():
                log.error("pipeline thread died; exiting")
                return 1
            if not self.capture.is_alive() and not self.capture.finished.is_set():
                log.error("capture thread died; exiting")
                return 1
            inferred = self.counters.snapshot()["inferred"]
            if inferred != last_inferred or not self.pipeline.inflight():
                last_inferred, progress_mono = inferred, now
            elif now - progress_mono > stall_s:
                log.error("inference stalled: %d request(s) in flight, no result for %.0fs; "
                          "exiting", self.pipeline.inflight(), now - progress_mono)
                return 1
            if self.capture.finished.is_set() and not self.capture.is_alive():
                log.info("source finished; stopping")
                self.stop.wait(0.5)  # let the last frames through
                break
            self.capture.check_stall(now)
            if now >= next_stats:
                next_stats = now + interval
                self.publish_stats(interval)
            if wd and now >= next_wd:
                next_wd = now + wd
                self.notifier.watchdog()
        return 0

    def publish_stats(self, interval: float) -> Stats:
        with self._lock:
            state = self.state()
        rates = self.counters.rates()
        frames = self.counters.snapshot()
        frames["mqtt_dropped"] = self.comms.queue.dropped
        stats = Stats(
            device_id=self.cfg.device_id, ts=round(time.time(), 3),
            uptime_s=round(time.monotonic() - self.started_mono, 1), interval_s=interval,
            fps={"capture": round(rates["captured"], 2), "inference": round(rates["inferred"], 2),
                 "publish": round(rates["published"], 2)},
            latency_ms=self.latency.take(), frames=frames,
            queues={"capture": self.slot.depth(), "inflight": self.pipeline.inflight(),
                    "reorder": len(self.pipeline.reorder), "mqtt_outbound": len(self.comms.queue)},
            device=self.engine.device, precision=self.engine.info.precision,
            inference_precision=self.engine.inference_precision,
            num_requests=self.engine.num_requests, model=self.engine.info,
            process=self.usage.sample(), state=state)
        self.comms.publish_stats(stats.to_json())
        with self._lock:  # the state may have changed meanwhile: write the current one
            self._health(self.state(), "; ".join(self._reasons.values()) or None)
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
        if self.comms:
            self.comms.stop(self._status("offline", "shutdown").to_json())
        self._health("offline", "shutdown")
        log.info("stopped")
