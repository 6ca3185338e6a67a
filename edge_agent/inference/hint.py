"""Which OpenVINO performance hint the next frame runs under, for ``performance_hint = auto``.

The CPU plugin gives a choice the agent cannot make once for all (docs/benchmarks-agent.md):
the THROUGHPUT hint (parallel streams, one core each) gets the most frames per second out of
the cores, but every frame waits for one core's inference; the LATENCY hint (one stream on
every core) publishes each mask soonest, but leaves cores idle between layers and loses a
quarter of the throughput. A camera at 30 fps wants the second, a camera faster than the
device (or several) the first.

``HintPolicy`` decides by the load the frames put on the latency mode: its utilisation
``u`` = frames submitted per second x seconds per latency-hint inference. Above
``to_throughput`` (the latency mode half busy: frames of several cameras start to wait for
the one latency stream) it switches to throughput; below
``to_latency`` back; each mode holds at least ``dwell_s``. Pure: times in, a mode out.

The switch points depend on how many cameras (``source``) fed the last window. One camera
paces its own frames: each is taken before the next comes until the latency mode is nearly
full, so it keeps the latency hint to ``one_source_to_throughput`` (the origin's model at a
30 fps camera loads it 0.63-0.76: p50 20 ms under latency, 40 ms under throughput). Frames of
several cameras collide and wait for the one latency stream well before it is full
(benchmarks/bench_cameras.py), so several switch at ``to_throughput``.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Deque, Dict, Hashable, Optional, Tuple

LATENCY = "latency"
THROUGHPUT = "throughput"
LATENCY_TIMES = 64  # latency-mode times the estimate is the median of


@dataclass
class HintPolicy:
    service_s: float  # seconds per latency-hint inference (at start; then a recent median)
    # set by bench_cameras on 3.0.0: at 0.75, eight 15 fps cameras (0.8 by the in-agent
    # inference time) lost 3.7 % of their frames queued on the one latency stream; many
    # cameras need the streams well before the latency mode is full
    to_throughput: float = 0.5
    to_latency: float = 0.3
    # one camera: at 0.75 the origin's model at 30 fps (0.63-0.76 as the in-agent time
    # moves) went over now and then and stayed on throughput (40 ms instead of 20); a
    # camera faster than the latency mode reads well over 1 (its frames wait in the queue)
    one_source_to_throughput: float = 0.9
    one_source_to_latency: float = 0.6
    window_s: float = 1.0
    dwell_s: float = 2.0
    mode: str = LATENCY
    switches: int = 0
    _since: Optional[float] = None  # when the current mode began
    _started: Optional[float] = None  # the first frame
    window_max: int = 4096  # submissions kept (a faster load reads as overload anyway)
    _submits: Deque[Tuple[float, Hashable]] = field(default_factory=deque)
    _per_source: Dict[Hashable, int] = field(default_factory=dict)
    _latency_times: Deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_TIMES))

    def _forget_oldest(self) -> None:
        _, source = self._submits.popleft()
        left = self._per_source[source] - 1
        if left:
            self._per_source[source] = left
        else:
            del self._per_source[source]

    def utilisation(self, now: float) -> float:
        """The latency mode's share of busy time at the last ``window_s``'s frame rate."""
        while self._submits and now - self._submits[0][0] > self.window_s:
            self._forget_oldest()
        span = self.window_s
        if len(self._submits) == self.window_max:  # more frames than it keeps
            span = min(span, now - self._submits[0][0])
        return len(self._submits) / max(span, 1e-6) * self.service_s

    def sources(self) -> int:
        """Cameras with a frame in the window (after the last ``utilisation``)."""
        return len(self._per_source)

    def submitted(self, now: float, source: Hashable = None) -> str:
        """A frame of camera ``source`` is about to be submitted at ``now``: the mode it
        runs under."""
        if self._since is None:
            self._since = self._started = now
        if len(self._submits) == self.window_max:
            self._forget_oldest()
        self._submits.append((now, source))
        self._per_source[source] = self._per_source.get(source, 0) + 1
        if now - self._since < max(self.dwell_s, self.window_s):
            return self.mode
        u = self.utilisation(now)
        one = self.sources() <= 1
        up = self.one_source_to_throughput if one else self.to_throughput
        down = self.one_source_to_latency if one else self.to_latency
        if self.mode == LATENCY and u > up:
            self._switch(THROUGHPUT, now)
        elif self.mode == THROUGHPUT and u < down:
            self._switch(LATENCY, now)
        return self.mode

    def finished(self, mode: str, seconds: float, now: Optional[float] = None) -> None:
        """A request of ``mode`` took ``seconds`` from submit to result (at ``now``):
        latency-mode times keep ``service_s`` current (a slower or busier device moves the
        switch point).

        The estimate is the median of the last ``LATENCY_TIMES`` (the first: the start's
        measurement), and the times of the first ``dwell_s`` after the first frame are left
        out (the start's own work shares the cores then), so neither a slow start nor a
        burst of stragglers moves it: a running mean did, read one 30 fps camera of the
        origin's model as overload at start, and under throughput no latency request came
        to correct it."""
        if now is not None and (self._started is None or now - self._started < self.dwell_s):
            return
        if mode == LATENCY and seconds > 0:
            if not self._latency_times:
                self._latency_times.append(self.service_s)
            self._latency_times.append(min(seconds, 4.0 * self.service_s))
            self.service_s = statistics.median(self._latency_times)

    def _switch(self, mode: str, now: float) -> None:
        self.mode, self._since = mode, now
        self.switches += 1
