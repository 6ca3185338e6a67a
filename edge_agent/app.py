"""The agent's lifecycle: start the parts in order, stop them in reverse; stats on a tick.

Health (``health.py``) owns the states and their reasons, the watchdog (``watchdog.py``)
the liveness checks; this module wires them and publishes what they decide. One agent
serves every camera of its config (and every sender of frames over MQTT) with one
compiled model (``pipeline.py``), each camera under its own topic id; with several
cameras the agent has a status and stats of its own, under ``device_id``, and its
connection's last will is on that status (docs/mqtt.md, "Several cameras").
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Any, Dict, List, Optional

from edge_agent import __version__
from edge_agent.bundle.manifest import OpenedBundle
from edge_agent.cameras import Camera, CameraRegistry, Outputs
from edge_agent.config import CameraConfig, Config, ConfigError, SourceConfig, frames_in_topic
from edge_agent.control.homeassistant import CameraInfo
from edge_agent.control.service import PAUSED_REASON, Control
from edge_agent.health.metrics import Metrics
from edge_agent.health.sdnotify import Notifier
from edge_agent.health.state import Health
from edge_agent.health.stats import Counters, LatencyWindow, ProcessUsage, stats_message
from edge_agent.health.watchdog import Watchdog
from edge_agent.inference import ovcompat
from edge_agent.inference.engine import Engine
from edge_agent.inference.pipeline import Pipeline
from edge_agent.inference.remote import RemoteEngine
from edge_agent.mqtt.connection import MAX_INCOMING_BYTES, MqttComms
from edge_agent.protocol.messages import Quality, Stats, Status
from edge_agent.quality.drift import DriftSettings, QualityMonitor, figures_threshold
from edge_agent.quality.samples import Sampler, SampleWriter
from edge_agent.sources.capture import Capture
from edge_agent.sources.frames_in import FramesIn, SenderHooks
from edge_agent.sources.slots import FrameSlots

log = logging.getLogger("segedge.agent")
WAITING_FOR_FRAME = "source: waiting for first frame"
FINISHED = "source: finished (the file ended and loop = false)"
TICK_S = 0.2
QUALITY_EVAL_S = 1.0  # each camera's quality window is judged this often (main thread)
# the agent's stats ``requests``: frames and commands refused whole for a response topic
# outside the asker's reply tree; commands dropped by the token bucket (answered when
# they asked) or by a full commands queue (not answered)
REQUEST_COUNTERS = ("reply_topic_refused", "commands_rate_limited", "commands_queue_full")


class Agent:
    def __init__(self, cfg: Config, stop: threading.Event,
                 notifier: Optional[Notifier] = None,
                 opened: Optional[OpenedBundle] = None) -> None:
        self.cfg, self.stop = cfg, stop
        self.agent_id = cfg.device_id
        self.multi = cfg.multi_camera
        self.notifier = notifier or Notifier()
        self.session = uuid.uuid4().hex[:12]
        self.totals = Counters()  # the whole agent (in the single-camera form: the camera's)
        self.requests = Counters(REQUEST_COUNTERS)
        self.latency = LatencyWindow()
        self.usage = ProcessUsage()
        self.slots = FrameSlots()
        self.started_mono = time.monotonic()
        self._seq_lock = threading.Lock()
        self._stats_seq = 0
        opened = opened or OpenedBundle.open(cfg.model.bundle, cfg.model.target)  # BundleError
        self._engine: Optional[Engine] = None  # until the pipeline owns it
        self.wake = threading.Event()  # a health change or a new connection: publish now
        self.health = Health(cfg.health_file, self.notifier, facts=self._facts, wake=self.wake,
                             agent_id=self.agent_id)
        self._engine = self._new_engine(opened)
        self.cameras = CameraRegistry()
        self.captures: Dict[str, Capture] = {}
        self._finished: set = set()
        self.comms: Optional[MqttComms] = None
        self.pipeline: Optional[Pipeline] = None
        self.control: Optional[Control] = None
        self.frames_in: Optional[FramesIn] = None
        self._republish = threading.Event()  # set by reload, taken by the main loop
        self._max_packet = 0  # MQTT 5: the largest packet the broker may send us (status)
        # figures need the model here: a server answers class maps only (docs/quality.md)
        self.quality_on = cfg.quality.enabled and not cfg.model.server
        q = cfg.quality
        self.drift_settings = DriftSettings(
            window_s=q.window_s, window_frames=q.window_frames, min_frames=q.min_frames,
            enter=q.drift_enter, exit=q.drift_exit, enter_after_s=q.enter_after_s,
            exit_after_s=q.exit_after_s)
        self.samples: Optional[SampleWriter] = None  # the samples thread, when one saves
        self.metrics: Optional[Metrics] = None
        if cfg.metrics.listen:  # prometheus-client is imported only when it starts
            self.metrics = Metrics(self, cfg.metrics.listen)

    def _new_engine(self, opened: OpenedBundle) -> Engine:
        """The model here (Engine) or on a KServe v2 server (RemoteEngine)."""
        if not self.cfg.model.server:
            return Engine(self.cfg.model, opened)
        return RemoteEngine(self.cfg.model, opened)  # type: ignore[return-value]

    def _watch(self, engine: Engine) -> None:
        """A server engine's problems are the ``inference`` component of the health (of
        the engine in service only: a reload's candidate says nothing until swapped in)."""
        if isinstance(engine, RemoteEngine):
            engine.on_problem = lambda reason: self.health.set("inference", reason)
            self.health.set("inference", engine.problem)

    def quality_threshold(self, engine: Engine) -> Optional[float]:
        """The threshold of ``engine``'s figures: its reference's (the figures must be the
        reference's to be compared), else ``quality.confidence_threshold``; None: off."""
        if not self.quality_on:
            return None
        return figures_threshold(getattr(engine, "reference", None),
                                 self.cfg.quality.confidence_threshold)

    @property
    def engine(self) -> Engine:
        """The model in service. Once running, the pipeline is its one owner (its infer
        thread swaps it on reload), so status, stats and masks always name the same one."""
        pipeline = self.pipeline
        return pipeline.engine if pipeline is not None else self._engine

    # --- cameras ----------------------------------------------------------------------
    def camera(self, camera_id: str) -> Optional[Camera]:
        return self.cameras.get(camera_id)

    def _add_camera(self, cam_cfg: CameraConfig, counted: bool) -> Camera:
        cid, comms = cam_cfg.id, self.comms
        settings = (lambda: self.control.state(cid)) if not cam_cfg.sender else None
        camera = Camera(cam_cfg, Outputs(
            mask=lambda text: comms.publish_mask(text, cid),
            frame=lambda text: comms.publish_frame(text, cid),
            overlay=lambda jpeg: comms.publish_overlay(jpeg, cid),
            reply=comms.publish_reply), settings,
            totals=self.totals if self.multi else None,
            total_latency=self.latency if self.multi else None)
        if not self.multi:  # one camera, the agent's own id: its counters are the agent's
            camera.counters, camera.latency = self.totals, self.latency
        if self.metrics is not None:
            camera.observe_latency = self.metrics.latency_observer(cid)
        if self.quality_on:
            camera.quality = QualityMonitor(self.drift_settings,
                                            getattr(self.engine, "reference", None))
        if cam_cfg.samples.enabled:
            camera.sampler = self._sampler(cid, cam_cfg)
        self.slots.add(cid)
        self.health.add_camera(cid, counted=counted)
        self.cameras.add(camera)
        return camera

    def _sampler(self, camera_id: str, cam_cfg: CameraConfig) -> Sampler:
        """The camera's sampler; the one writer thread starts with the first."""
        if self.samples is None:
            self.samples = SampleWriter(self.stop)
            self.samples.start()
        log.info("%s: saving samples for labelling in %s (%g a minute at most, %d kept)",
                 camera_id, os.path.join(self.cfg.samples.dir, camera_id),
                 cam_cfg.samples.per_minute, cam_cfg.samples.max_samples)
        return Sampler(camera_id, cam_cfg.samples, self.cfg.samples.dir, self.samples)

    def _remove_camera(self, camera_id: str, reason: str) -> None:
        self.cameras.remove(camera_id)
        self.slots.remove(camera_id)
        self.health.remove_camera(camera_id)
        self.comms.publish_status(self._status("offline", reason, camera_id=camera_id))

    def _open_sender(self, sender: str) -> Optional[Camera]:
        """A new frames-in sender: a camera of its own, not counted for the agent."""
        f = self.cfg.frames_in
        source = SourceConfig(uri=f"mqtt:{frames_in_topic(self.cfg)}", loop=True, fps=0.0,
                              stall_timeout_s=f.stall_timeout_s)
        camera = self._add_camera(CameraConfig.from_sections(sender, source, self.cfg.output,
                                                             sender=True,
                                                             samples=self.cfg.samples),
                                  counted=False)
        self.wake.set()
        return camera

    # --- what the status and the health file say ------------------------------------
    def _status(self, state: str, reason: Optional[str], ts: float = 0.0,
                camera_id: Optional[str] = None) -> Status:
        """The agent's status (``camera_id`` None) or a camera's. ``seq`` and
        ``connection`` are stamped by MqttComms as it sends."""
        own = camera_id is None or camera_id == self.agent_id
        cameras = None
        if own and self.multi:
            cameras = {cid: ("offline" if state == "offline" else self.health.view(cid).state)
                       for cid in self.cameras}
        return Status(device_id=camera_id or self.agent_id, state=state,
                      ts=round(ts or time.time(), 3),
                      agent_version=__version__, model=self.engine.info,
                      device=self.engine.device or None, reason=reason,
                      device_errors=dict(self.engine.failures),
                      runtime=ovcompat.runtime_version(), pid=os.getpid(),
                      session=self.session, agent_id=None if own else self.agent_id,
                      cameras=cameras,
                      max_packet_bytes=self._max_packet if own and self._max_packet else None)

    def _will(self, connection: int) -> Status:
        return self._status("offline", "connection lost")

    def _publish_status(self, now: float) -> None:
        """Once per tick: the newest views, and the current ones after each connect."""
        self.health.set("mqtt", self.comms.problem(now))
        announce = self.comms.take_announce()
        view = self.health.take_change()
        camera_views = self.health.take_camera_changes()
        republish = self._republish.is_set()
        if republish:
            self._republish.clear()  # a reload after this is seen next tick
        if announce or republish:  # a new connection hears the current states
            view = self.health.view()
            camera_views = {cid: self.health.view(cid) for cid in self.cameras
                            if cid != self.agent_id}
        for cid, cview in camera_views.items():
            if cid in self.cameras:
                self.comms.publish_status(self._status(cview.state, cview.reason, cview.since,
                                                       camera_id=cid))
        if view is None and camera_views and self.multi:
            view = self.health.view()  # the agent's status maps its cameras' states
        if view is not None:
            self.comms.publish_status(self._status(view.state, view.reason, view.since))
        if announce and self.control:
            self.control.on_connect()  # retained command states, discovery

    def _facts(self) -> Dict[str, Any]:
        """The health file's facts (called under Health's lock: no Health calls here)."""
        info = self.engine.info
        comms = self.comms
        cameras = self.cameras.snapshot()
        return {"model": {"name": info.name, "version": info.version,
                          "precision": info.precision},
                "device": self.engine.device or None,
                "mqtt": comms.state() if comms else {"connected": False, "broker": None,
                                                      "reason": None},
                "masks_published": self.pipeline.masks_sent if self.pipeline else 0,
                "masks_by_camera": {cid: c.masks_sent for cid, c in cameras.items()},
                "session": self.session, **self._quality_facts(cameras),
                **({"samples": {cid: c.sampler.report() for cid, c in cameras.items()
                                if c.sampler is not None}} if self.samples else {})}

    def _quality_facts(self, cameras: Dict[str, Camera]) -> Dict[str, Any]:
        """The health file's ``quality``: per camera with a window, its state and figures
        (never part of ``state``: quality does not change the status)."""
        if not self.quality_on:
            return {}
        version = self.engine.info.version
        return {"quality": {cid: {**c.quality.health(), "model_version": version}
                            for cid, c in cameras.items() if c.quality is not None}}

    # --- lifecycle ------------------------------------------------------------------
    def run(self) -> int:
        engine, cfg = self.engine, self.cfg
        self._watch(engine)
        engine.load()  # InferenceError when no device works
        engine.warmup()
        if engine.failures:
            log.warning("running on %s after failures: %s", engine.device,
                        "; ".join(f"{d}: {r}" for d, r in engine.failures.items()))
        incoming = MAX_INCOMING_BYTES
        if cfg.frames_in.enabled:  # larger frames are counted and refused, not cut off
            incoming = max(incoming, 2 * cfg.frames_in.max_bytes + 65536)
        self.comms = MqttComms(cfg.mqtt, self.agent_id, self._will,
                               on_connected=self.wake.set, max_incoming_bytes=incoming)
        if cfg.mqtt.protocol == "5":  # announced in the status: larger never reach us
            self._max_packet = incoming
        self.health.set("mqtt", self.comms.problem())  # not delivering before connected
        self.control = Control(cfg, self.comms, self.stop, self._camera_infos, self.reload,
                               self._on_paused, count=self.requests.add)
        for cam_cfg in cfg.cameras:
            camera = self._add_camera(cam_cfg, counted=True)
            self.control.snapshot_targets[cam_cfg.id] = camera
            # not online before the source delivers: capture's first frames clear this
            self.health.set("source", WAITING_FOR_FRAME, camera=cam_cfg.id)
        self.control.start()  # subscribes before the connection exists: renewed on connect
        if cfg.frames_in.enabled:
            reserved = {self.agent_id} | {c.id for c in cfg.cameras}
            self.frames_in = FramesIn(cfg.frames_in, frames_in_topic(cfg), reserved,
                                      self.slots, SenderHooks(
                                          open=self._open_sender, close=self._remove_camera,
                                          state=lambda s, r: self.health.set("source", r,
                                                                             camera=s),
                                          refused=lambda: self.totals.add("refused"),
                                          reply=self.comms.publish_reply,
                                          reply_refused=lambda: self.requests.add(
                                              "reply_topic_refused")),
                                      self.stop, prefix=cfg.mqtt.prefix)
            self.comms.subscribe(frames_in_topic(cfg), 0, handler=self.frames_in.incoming)
            self.frames_in.start()
            log.info("frames in: %s (%s)", frames_in_topic(cfg),
                     ", ".join(cfg.frames_in.senders) or "any sender")
        self.comms.start()
        self.pipeline = Pipeline(engine, cfg.output.mask_resolution, self.slots, self.camera,
                                 self.totals, self.stop, quality=self.quality_threshold)
        self._engine = None  # handed over: the pipeline owns the engine in service
        if self.metrics is not None:
            self.pipeline.observe_inference = self.metrics.observe_inference
        self.pipeline.start()
        if self.metrics is not None:
            try:
                self.metrics.start()
            except OSError as exc:
                raise ConfigError(f"metrics.listen: cannot listen on {cfg.metrics.listen}: "
                                  f"{exc.strerror or exc}") from None
            log.info("Prometheus metrics on http://%s/metrics", cfg.metrics.listen)
        for cam_cfg in cfg.cameras:
            self.captures[cam_cfg.id] = self._capture(self.cameras.get(cam_cfg.id))
        for capture in self.captures.values():
            capture.start()
        watchdog = Watchdog(self.notifier, self.pipeline, list(self.captures.values()),
                            self.comms.fatal, [self.frames_in] if self.frames_in else [])
        if self.multi:
            log.info("serving %d camera(s): %s", len(cfg.cameras),
                     ", ".join(c.id for c in cfg.cameras) or "none (frames in only)")
        self.notifier.ready(f"running on {engine.device}")
        code = self._loop(watchdog)
        self._shutdown()
        return code

    def _capture(self, camera: Camera) -> Capture:
        cid = camera.id

        def on_frame(dropped: bool) -> None:
            camera.count("captured")
            if dropped:
                camera.count("dropped")

        return Capture(camera.cfg.source, self.slots.slot(cid), self.stop,
                       on_state=lambda reason: self.health.set("source", reason, camera=cid),
                       on_frame=on_frame, on_stale=lambda: camera.count("stale"),
                       name="capture" if not self.multi else f"capture:{cid}")

    # --- commands -------------------------------------------------------------------
    def _on_paused(self, camera_id: str, paused: bool) -> None:
        """Paused: no masks flow, so the camera is not ``online`` (docs/agent.md)."""
        self.health.set("commands", PAUSED_REASON if paused else None, camera=camera_id)

    def _camera_infos(self) -> List[CameraInfo]:
        info = self.engine.info
        return [CameraInfo(c.id, tuple(self.engine.classes), info.name, info.version,
                           info.precision, overlay=c.overlay_interval_s > 0,
                           quality=self.quality_on)
                for c in self.cfg.cameras]

    def reload(self) -> Optional[str]:
        """The ``reload`` command (its own thread): open and verify the configured bundle,
        compile and warm up a new engine, swap it in. None, or why the old one keeps
        serving. The MQTT connection is untouched."""
        t0 = time.monotonic()
        try:
            opened = OpenedBundle.open(self.cfg.model.bundle, self.cfg.model.target)
            engine = self._new_engine(opened)
            engine.load()
            engine.warmup()
            problem = getattr(engine, "problem", None)  # a server that cannot serve it
            if problem:
                raise RuntimeError(problem)
        except Exception as exc:  # noqa: BLE001 - BundleError, InferenceError, OpenVINO's
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            log.warning("reload refused, %s %s keeps serving: %s", self.engine.info.name,
                        self.engine.info.version, reason)
            return reason
        old = self.pipeline.engine
        if not self.pipeline.swap_engine(engine).wait(30.0):
            return "the inference thread did not take the new model within 30 s"
        if hasattr(old, "close"):
            old.close()  # the old server client's workers (drained by the swap)
        self._watch(engine)  # the old engine's problem goes with it
        for camera in self.cameras.snapshot().values():  # the new model's reference
            if camera.quality is not None:
                camera.quality.set_reference(getattr(engine, "reference", None))
        self._republish.set()
        self.wake.set()
        log.info("reloaded %s %s (%s) on %s in %.1fs", engine.info.name, engine.info.version,
                 engine.info.precision, engine.device, time.monotonic() - t0)
        return None

    def _sources_finished(self) -> bool:
        """Every configured source ended (loop = false) and no frames come over MQTT.
        A camera that ended while others go on says so in its status."""
        for cid, capture in self.captures.items():
            if capture.done() and not capture.is_alive() and cid not in self._finished:
                self._finished.add(cid)
                if self.multi:
                    self.health.set("source", FINISHED, camera=cid)
        return bool(self.captures) and len(self._finished) == len(self.captures) \
            and self.frames_in is None

    def _loop(self, watchdog: Watchdog) -> int:
        interval = self.cfg.output.stats_interval_s
        next_stats = time.monotonic() + interval
        next_quality = time.monotonic() + QUALITY_EVAL_S
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
            if self._sources_finished():
                log.info("source finished; stopping")
                self.stop.wait(0.5)  # let the last frames through
                break
            self._publish_status(now)
            self.comms.pump()
            stats_due = now >= next_stats
            if self.quality_on and (now >= next_quality or stats_due):
                next_quality = now + QUALITY_EVAL_S
                self.judge_quality(publish_all=stats_due)
            if stats_due:
                next_stats = now + interval
                self.publish_stats(interval)
        return 0

    # --- quality ----------------------------------------------------------------------
    def judge_quality(self, publish_all: bool = False) -> None:
        """Evaluate every camera's window; publish (retained) the cameras whose state
        changed, or all of them with ``publish_all`` (every stats interval). A change is
        logged once and rewrites the health file; it never touches the status."""
        changed = False
        for cid, camera in self.cameras.snapshot().items():
            monitor = camera.quality
            if monitor is None:
                continue
            before = monitor.state.state
            if monitor.evaluate():
                changed = True
                log.info("%s: quality %s -> %s (drift score %s)", cid, before,
                         monitor.state.state,
                         "none" if monitor.score is None else f"{monitor.score:.2f}")
                self.comms.publish_quality(self._quality(cid, monitor).to_json(), cid)
            elif publish_all:
                self.comms.publish_quality(self._quality(cid, monitor).to_json(), cid)
        if changed:
            self.health.refresh()

    def _quality(self, camera_id: str, monitor: QualityMonitor) -> Quality:
        info = self.engine.info
        body = monitor.report()
        return Quality(device_id=camera_id, camera_id=camera_id, ts=round(time.time(), 3),
                       model={"name": info.name, "version": info.version},
                       agent_id=self.agent_id if self.multi and camera_id != self.agent_id
                       else None, **body)

    # --- stats ------------------------------------------------------------------------
    def _stats(self, device_id: str, counters: Counters, latency: LatencyWindow,
               capture_depth: int, state: str, seq: int, process: Dict[str, float],
               interval: float, **extra: Any) -> Stats:
        engine, comms, pipeline = self.engine, self.comms, self.pipeline
        return stats_message(
            device_id, counters, latency, uptime_s=time.monotonic() - self.started_mono,
            interval_s=interval,
            queues={"capture": capture_depth, "inflight": pipeline.inflight(),
                    "reorder": len(pipeline.reorder), "mqtt_outbound": len(comms.queue),
                    "mqtt_spool": len(comms.spool)},
            connection_drops={"mqtt_dropped": comms.dropped,
                              "spool_dropped": comms.spool.dropped,
                              "publish_failed": comms.publish_failed},
            model=engine.info, device=engine.device,
            inference_precision=engine.inference_precision, num_requests=engine.num_requests,
            performance_hint=getattr(engine, "performance_hint", None),
            process=process, state=state, session=self.session, seq=seq, **extra)

    def publish_stats(self, interval: float) -> Stats:
        """Each camera's stats under its id, then the agent's (in the single-camera form
        the two are one message)."""
        per_camera: Dict[str, Dict[str, Any]] = {}
        process = self.usage.sample()  # the one process, in every camera's stats too
        for cid, camera in self.cameras.snapshot().items():
            if cid == self.agent_id:
                continue
            camera.stats_seq += 1
            stats = self._stats(cid, camera.counters, camera.latency, self.slots.depth(cid),
                                self.health.view(cid).state, camera.stats_seq, process,
                                interval, agent_id=self.agent_id,
                                quality=camera.quality.stats() if camera.quality else None)
            self.comms.publish_stats(stats.to_json(), cid)
            per_camera[cid] = {"state": stats.state, "fps": stats.fps,
                               "latency_p50_ms": stats.latency_ms.get("p50"),
                               "sender": camera.cfg.sender}
        with self._seq_lock:
            self._stats_seq += 1
            seq = self._stats_seq
        own = self.cameras.get(self.agent_id)  # the single-camera form: the camera's window
        stats = self._stats(self.agent_id, self.totals, self.latency, self.slots.depth(),
                            self.health.state, seq, process, interval,
                            cameras=per_camera if self.multi else None,
                            requests=self.requests.snapshot(),
                            quality=own.quality.stats() if own and own.quality else None)
        self.comms.publish_stats(stats.to_json())
        self.health.refresh()
        log.debug("stats %s", stats.fps)
        return stats

    def _final_stats(self) -> None:
        """One last stats message at a clean stop (before the offline status), so that a
        consumer's totals are the agent's final counts, not those of the last tick."""
        try:
            self.publish_stats(self.cfg.output.stats_interval_s)
        except Exception:  # noqa: BLE001 - a stop must go on whatever the stats hit
            log.exception("final stats not published")

    def _shutdown(self) -> None:
        log.info("stopping")
        self.notifier.stopping()
        self.stop.set()
        for capture in self.captures.values():
            capture.join(3.0 / max(1, len(self.captures)) + 0.5)
        if self.pipeline:
            self.pipeline.join(5.0)
        if self.frames_in:
            self.frames_in.join(1.0)
        if self.samples:
            self.samples.join(2.0)
        if self.control:
            self.control.join(1.0)
        if self.comms and self.pipeline:
            self._final_stats()
        if self.comms:
            cameras = [self._status("offline", "shutdown", camera_id=cid)
                       for cid in self.cameras if cid != self.agent_id]
            self.comms.stop(self._status("offline", "shutdown"), cameras=cameras)
        self.health.stop("shutdown")
        if self.metrics is not None:
            self.metrics.stop()
        log.info("stopped")
