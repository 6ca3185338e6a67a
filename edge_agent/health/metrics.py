"""Prometheus metrics of a running agent (``[metrics] listen = "HOST:PORT"``).

Off by default; prometheus-client (the ``metrics`` extra, pure Python) is imported only
when ``listen`` is set. Everything but the two latency histograms is read from the
agent's own counters and states at scrape time, in prometheus-client's HTTP thread: a
scrape adds no work to the pipeline. The histograms are kept here as cumulative bucket
counts, one bisect and one add per mask (capture -> publish) and per inference result.

Series (per camera: label ``camera``; docs/agent.md, "Prometheus metrics"):

- ``segedge_frames_{captured,inferred,published,dropped,stale}_total`` counters;
- ``segedge_capture_to_publish_seconds`` and ``segedge_inference_seconds`` histograms
  (inference: from submitting the frame to its result, queueing in OpenVINO included);
- ``segedge_state{camera,state}`` 1 for the camera's state (online, degraded, offline);
- ``segedge_capture_queue`` (0/1: the latest-frame slot), ``segedge_mqtt_connected``,
  ``segedge_mqtt_outbound_queue`` (masks waiting), ``segedge_mqtt_spool`` (status and
  stats waiting);
- ``segedge_model_info{name,version,sha256,device,precision}`` 1;
- ``[quality]``: ``segedge_quality_uncertain`` (the window's share of unsure pixels),
  ``segedge_quality_drift_score`` and ``segedge_quality_drifting`` (1 while ``drifting``)
  per camera with figures in its window.
"""

from __future__ import annotations

import bisect
import threading
from typing import Any, Callable, Dict, List, Tuple

from edge_agent.config import metrics_address
from edge_agent.protocol.messages import STATES

BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
FRAME_COUNTERS = ("captured", "inferred", "published", "dropped", "stale")


class Buckets:
    """A histogram's counts per bucket (the last one: above every bound) and sum."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = [0] * (len(BUCKETS_S) + 1)
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        i = bisect.bisect_left(BUCKETS_S, seconds)
        with self._lock:
            self._counts[i] += 1
            self._sum += seconds

    def cumulative(self) -> Tuple[List[Tuple[str, int]], float]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        out, running = [], 0
        for bound, n in zip([*map(str, BUCKETS_S), "+Inf"], counts):
            running += n
            out.append((bound, running))
        return out, total


class Metrics:
    """The agent's collector; ``start()`` serves it on ``listen``."""

    def __init__(self, agent: Any, listen: str) -> None:
        self.agent, self.listen = agent, listen
        self.latency: Dict[str, Buckets] = {}
        self.inference: Dict[str, Buckets] = {}
        self._server: Any = None

    def latency_observer(self, camera_id: str) -> Callable[[float], None]:
        """For Camera.add_latency (milliseconds)."""
        buckets = self.latency.setdefault(camera_id, Buckets())
        return lambda ms: buckets.observe(ms / 1000.0)

    def observe_inference(self, camera_id: str, seconds: float) -> None:
        buckets = self.inference.get(camera_id)
        if buckets is None:
            buckets = self.inference.setdefault(camera_id, Buckets())
        buckets.observe(seconds)

    def start(self) -> None:
        """Serve on ``listen``; OSError when the address cannot be bound."""
        from prometheus_client import start_http_server
        from prometheus_client.registry import CollectorRegistry

        host, port = metrics_address(self.listen)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        self._server = start_http_server(port, addr=host, registry=registry)

    def stop(self) -> None:
        server = self._server[0] if isinstance(self._server, tuple) else None
        if server is not None:
            server.shutdown()
            server.server_close()

    def _cameras(self) -> Dict[str, Any]:
        agent = self.agent
        return {cid: cam for cid, cam in agent.cameras.snapshot().items()
                if not (agent.multi and cid == agent.agent_id)}

    @staticmethod
    def _quality(cameras: Dict[str, Any]):  # noqa: ANN205 - metric families
        from prometheus_client.core import GaugeMetricFamily

        uncertain = GaugeMetricFamily("segedge_quality_uncertain", "Share of unsure pixels "
                                      "over the camera's quality window", labels=["camera"])
        score = GaugeMetricFamily("segedge_quality_drift_score", "The window's drift score "
                                  "against the bundle's reference (0..1)", labels=["camera"])
        drifting = GaugeMetricFamily("segedge_quality_drifting", "1 while the camera's "
                                     "quality state is drifting", labels=["camera"])
        for cid, camera in cameras.items():
            monitor = getattr(camera, "quality", None)
            if monitor is None:
                continue
            mean = monitor.window.get("uncertain_mean")
            if mean is not None:
                uncertain.add_metric([cid], mean)
            if monitor.score is not None:
                score.add_metric([cid], monitor.score)
            drifting.add_metric([cid], 1.0 if monitor.state.state == "drifting" else 0.0)
        yield uncertain
        yield score
        yield drifting

    def collect(self):  # noqa: ANN201 - prometheus-client's collector protocol
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            InfoMetricFamily,
        )

        agent = self.agent
        cameras = self._cameras()
        frames = {name: CounterMetricFamily(f"segedge_frames_{name}", f"Frames {name}",
                                            labels=["camera"]) for name in FRAME_COUNTERS}
        state = GaugeMetricFamily("segedge_state", "1 for the camera's state",
                                  labels=["camera", "state"])
        queue = GaugeMetricFamily("segedge_capture_queue", "Frames waiting in the camera's "
                                  "latest-frame slot (0/1)", labels=["camera"])
        for cid, camera in cameras.items():
            try:  # a sender's camera may go while we read it: leave it out of this scrape
                counts = camera.counters.snapshot()
                now, depth = agent.health.view(cid).state, agent.slots.depth(cid)
            except (KeyError, AttributeError):
                continue
            for name in FRAME_COUNTERS:
                frames[name].add_metric([cid], counts.get(name, 0))
            for s in STATES:
                state.add_metric([cid, s], 1.0 if s == now else 0.0)
            queue.add_metric([cid], depth)
        yield from frames.values()
        yield state
        yield queue
        yield from self._quality(cameras)
        for name, table, text in (
                ("segedge_capture_to_publish_seconds", self.latency,
                 "Capture to publish latency of published masks"),
                ("segedge_inference_seconds", self.inference,
                 "Inference time, from submitting the frame to its result")):
            family = HistogramMetricFamily(name, text, labels=["camera"])
            for cid, buckets in sorted(table.items()):
                counts, total = buckets.cumulative()
                family.add_metric([cid], counts, total)
            yield family
        comms = agent.comms
        for name, value, text in (
                ("segedge_mqtt_connected", comms is not None and comms.connected,
                 "1 while connected to the broker"),
                ("segedge_mqtt_outbound_queue", len(comms.queue) if comms else 0,
                 "Masks waiting for the connection"),
                ("segedge_mqtt_spool", len(comms.spool) if comms else 0,
                 "Status and stats messages waiting for the connection")):
            yield GaugeMetricFamily(name, text, value=float(value))
        engine = agent.engine
        model = InfoMetricFamily("segedge_model", "The model the agent runs")
        model.add_metric([], {"name": engine.info.name, "version": engine.info.version,
                              "sha256": _model_sha256(engine), "device": engine.device or "",
                              "precision": engine.info.precision})
        yield model


def _model_sha256(engine: Any) -> str:
    """The sha256 of the compiled model file, as the bundle's manifest lists it."""
    target = engine.target
    return next((f.sha256 for f in target.files if f.path == target.model), "")

