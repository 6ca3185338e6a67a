"""Pacing: how often a thing may happen, in one place.

``Backoff`` (retries: exponential with jitter), ``RateLimiter`` (output: an even rate,
no bursts), ``TokenBucket`` (input floods: a rate with bursts, the rest dropped and
counted) and ``LogThrottle`` (a log line at most once per interval per key, with a
bounded number of keys whatever ids strangers send). Pure, clocks injectable; each
instance has one owner thread."""

from __future__ import annotations

import random
import time
from typing import Callable, Dict, Hashable, Optional


class Backoff:
    """delay(n) = min(cap, base * factor**n), drawn uniformly from [delay/2, delay]."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, factor: float = 2.0,
                 rand: Optional[Callable[[], float]] = None) -> None:
        if base <= 0 or cap <= 0 or factor < 1:
            raise ValueError("backoff needs base > 0, cap > 0, factor >= 1")
        self.base, self.cap, self.factor = base, cap, factor
        self.attempts = 0
        self._rand = rand or random.random

    def ceiling(self) -> float:
        return min(self.cap, self.base * self.factor ** min(self.attempts, 64))

    def next_delay(self) -> float:
        top = self.ceiling()
        self.attempts += 1
        return top / 2 + self._rand() * top / 2

    def reset(self) -> None:
        self.attempts = 0


class RateLimiter:
    """Admit at most ``rate`` events per second on average (0 = unlimited), no bursts."""

    def __init__(self, rate: float) -> None:
        self.period = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0

    def allow(self, now: float) -> bool:
        if not self.period:
            return True
        if now < self._next:
            return False
        # at most half a period of credit: the average holds, bursts stay short
        self._next = max(self._next + self.period, now - self.period / 2)
        return True


class TokenBucket:
    """At most ``rate`` commands a second on average, ``burst`` at once.

    A flood beyond it is dropped (and counted) before parsing, so the commands thread
    does bounded work per second and inference never waits on commands. The clock is
    injectable (monotonic seconds) for tests. Not thread-safe: one owner (the router, on
    the commands thread).
    """

    def __init__(self, rate: float = 5.0, burst: int = 10,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("token bucket needs rate > 0 and burst >= 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self.dropped = 0

    def allow(self) -> bool:
        now = self._clock()
        elapsed = max(0.0, now - self._last)
        self._last = now
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.dropped += 1
        return False


class LogThrottle:
    """``allow(key)``: True at most once per ``every_s`` per key (the first time always).

    Remembers at most ``max_keys`` keys; past that it forgets them all, so a stranger
    cycling through ids costs a line per interval at most, never memory."""

    def __init__(self, every_s: float, max_keys: int = 256,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s, self.max_keys, self._clock = every_s, max_keys, clock
        self._last: Dict[Hashable, float] = {}

    def allow(self, key: Hashable = None) -> bool:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            return False
        if key not in self._last and len(self._last) >= self.max_keys:
            self._last.clear()
        self._last[key] = now
        return True
