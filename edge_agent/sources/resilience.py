"""Pacing for retries and output: exponential backoff with jitter, and a rate limiter."""

from __future__ import annotations

import random
from typing import Callable, Optional


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
