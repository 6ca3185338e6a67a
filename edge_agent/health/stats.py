"""Counters, rates, latency percentiles, process usage, and the stats message made of them."""

from __future__ import annotations

import os
import resource
import threading
import time
from collections import deque
from typing import Any, Deque, Dict, List, Mapping, Optional, Tuple

from edge_agent.protocol.messages import ModelInfo, Stats


def percentile(values: List[float], q: float) -> Optional[float]:
    """Linear-interpolated percentile (numpy's default), None for no data."""
    if not values:
        return None
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


class Counters:
    """Thread-safe monotonically increasing counters plus per-interval rates."""

    NAMES = ("captured", "inferred", "dropped", "stale", "published", "skipped_rate", "errors",
             "refused", "replied")

    def __init__(self, names: Optional[Tuple[str, ...]] = None) -> None:
        if names is not None:
            self.NAMES = names
        self._lock = threading.Lock()
        self._values: Dict[str, int] = dict.fromkeys(self.NAMES, 0)
        self._last: Dict[str, int] = dict(self._values)
        self._last_t = time.monotonic()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def snapshot(self) -> Dict[str, int]:
        with self._lock:
            return dict(self._values)

    def rates(self) -> Dict[str, float]:
        """Per-second rate of each counter since the previous call."""
        now = time.monotonic()
        with self._lock:
            dt = max(now - self._last_t, 1e-6)
            out = {k: (self._values[k] - self._last[k]) / dt for k in self.NAMES}
            self._last, self._last_t = dict(self._values), now
        return out


class LatencyWindow:
    """Latencies (ms) since the last take(), bounded to the newest ``maxlen``."""

    def __init__(self, maxlen: int = 5000) -> None:
        self._lock = threading.Lock()
        self._values: Deque[float] = deque(maxlen=maxlen)

    def add(self, ms: float) -> None:
        with self._lock:
            self._values.append(ms)

    def take(self) -> Dict[str, Optional[float]]:
        with self._lock:
            values = list(self._values)
            self._values.clear()
        out = {f"p{q}": (round(v, 2) if v is not None else None)
               for q, v in ((50, percentile(values, 50)), (95, percentile(values, 95)),
                            (99, percentile(values, 99)))}
        out["count"] = len(values)
        return out


class ProcessUsage:
    """RSS from /proc (peak RSS elsewhere) and CPU% between calls."""

    def __init__(self) -> None:
        self._t = time.monotonic()
        self._cpu = self._cpu_s()

    @staticmethod
    def _cpu_s() -> float:
        t = os.times()
        return t.user + t.system

    @staticmethod
    def rss_bytes() -> int:
        try:
            with open("/proc/self/statm", encoding="ascii") as handle:
                return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def sample(self) -> Dict[str, float]:
        now, cpu = time.monotonic(), self._cpu_s()
        pct = 100.0 * (cpu - self._cpu) / max(now - self._t, 1e-6)
        self._t, self._cpu = now, cpu
        return {"rss_bytes": self.rss_bytes(), "cpu_percent": round(pct, 1),
                "threads": threading.active_count()}


def stats_message(device_id: str, counters: Counters, latency: LatencyWindow, *,
                  uptime_s: float, interval_s: float, queues: Mapping[str, int],
                  connection_drops: Mapping[str, int], model: ModelInfo, device: str,
                  inference_precision: str, num_requests: int, process: Dict[str, float],
                  state: str, session: str, seq: int, **extra: Any) -> Stats:
    """One stats message from a camera's (or the agent's) counters and the agent's
    shared facts; takes the latency window's samples (one message per interval)."""
    rates = counters.rates()
    frames = {**counters.snapshot(), **connection_drops}
    return Stats(
        device_id=device_id, ts=round(time.time(), 3), uptime_s=round(uptime_s, 1),
        interval_s=interval_s,
        fps={"capture": round(rates["captured"], 2), "inference": round(rates["inferred"], 2),
             "publish": round(rates["published"], 2)},
        latency_ms=latency.take(), frames=frames, queues=dict(queues),
        device=device, precision=model.precision, inference_precision=inference_precision,
        num_requests=num_requests, model=model, process=process,
        state=state, session=session, seq=seq, **extra)
