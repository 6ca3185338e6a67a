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
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Deque, Optional

LATENCY = "latency"
THROUGHPUT = "throughput"


@dataclass
class HintPolicy:
    service_s: float  # seconds per latency-hint inference (measured; then its running mean)
    # set by bench_cameras on 3.0.0: at 0.75, eight 15 fps cameras (0.8 by the in-agent
    # inference time) lost 3.7 % of their frames queued on the one latency stream; many
    # cameras need the streams well before the latency mode is full
    to_throughput: float = 0.5
    to_latency: float = 0.3
    window_s: float = 1.0
    dwell_s: float = 2.0
    mode: str = LATENCY
    switches: int = 0
    _since: Optional[float] = None
    _submits: Deque[float] = field(default_factory=lambda: deque(maxlen=4096))

    def utilisation(self, now: float) -> float:
        """The latency mode's share of busy time at the last ``window_s``'s frame rate."""
        while self._submits and now - self._submits[0] > self.window_s:
            self._submits.popleft()
        span = self.window_s
        if len(self._submits) == self._submits.maxlen:  # more frames than it keeps
            span = min(span, now - self._submits[0])
        return len(self._submits) / max(span, 1e-6) * self.service_s

    def submitted(self, now: float) -> str:
        """A frame is about to be submitted at ``now``: the mode it runs under."""
        if self._since is None:
            self._since = now
        self._submits.append(now)
        if now - self._since < max(self.dwell_s, self.window_s):
            return self.mode
        u = self.utilisation(now)
        if self.mode == LATENCY and u > self.to_throughput:
            self._switch(THROUGHPUT, now)
        elif self.mode == THROUGHPUT and u < self.to_latency:
            self._switch(LATENCY, now)
        return self.mode

    def finished(self, mode: str, seconds: float) -> None:
        """A request of ``mode`` took ``seconds`` from submit to result: latency-mode times
        keep ``service_s`` current (a slower or busier device moves the switch point)."""
        if mode == LATENCY and seconds > 0:
            # one straggler (a stalled device, a hung request) moves the estimate at most
            # 4x: unclamped, a 60 s request made it 6 s, and the load it implies kept the
            # policy on throughput for good (no latency request ever corrects it there)
            seconds = min(seconds, 4.0 * self.service_s)
            self.service_s += 0.1 * (seconds - self.service_s)

    def _switch(self, mode: str, now: float) -> None:
        self.mode, self._since = mode, now
        self.switches += 1
