"""Client-side flow control for Twilio requests.

Twilio limits REST concurrency per account and answers 429 / 20429 beyond it ("never processed,
safe to retry"). `AdaptiveLimiter` keeps fewer requests in flight after a burst of 429s and grows
back slowly (AIMD), so a send slows down instead of hammering the API with retries.
`TokenBucket` enforces the channel's optional `requests_per_second`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class AdaptiveLimiter:
    """Concurrency limit that halves on throttling and grows back by one per `limit` successes.

    The limit starts at `max_concurrency`. A 429 halves it (never below 1), at most once per
    `cooldown_s`, because the requests already in flight when Twilio starts refusing all come back
    429 together and should count as one signal. After `limit` consecutive successes the limit grows
    by one, never above `max_concurrency`.
    """

    def __init__(
        self,
        max_concurrency: int,
        *,
        cooldown_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max(1, int(max_concurrency))
        self._limit = self._max
        self._in_flight = 0
        self._successes = 0
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._last_cut: float | None = None
        self._cond = threading.Condition(threading.Lock())

    @property
    def current_limit(self) -> int:
        return self._limit

    @property
    def max_concurrency(self) -> int:
        return self._max

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def acquire(self) -> None:
        with self._cond:
            while self._in_flight >= self._limit:
                self._cond.wait()
            self._in_flight += 1

    def release(self, *, ok: bool = False, throttled: bool = False) -> None:
        """Free a slot; `ok` counts a success towards growth, `throttled` signals a 429."""
        with self._cond:
            self._in_flight -= 1
            if throttled:
                self._cut()
            elif ok and self._limit < self._max:
                self._grow()
            self._cond.notify()

    def on_success(self) -> None:
        with self._cond:
            if self._limit < self._max:
                self._grow()

    def on_throttle(self) -> None:
        with self._cond:
            self._cut()

    def _grow(self) -> None:
        self._successes += 1
        if self._successes >= self._limit:
            self._successes = 0
            self._limit += 1
            self._cond.notify()

    def _cut(self) -> None:
        self._successes = 0
        now = self._clock()
        if self._last_cut is not None and now - self._last_cut < self._cooldown_s:
            return
        self._last_cut = now
        self._limit = max(1, self._limit // 2)

    def __enter__(self) -> "AdaptiveLimiter":
        self.acquire()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release(ok=exc_type is None)

    def __repr__(self) -> str:
        return f"AdaptiveLimiter(limit={self._limit}/{self._max}, in_flight={self._in_flight})"


class TokenBucket:
    """`rate_per_s` requests per second with bursts of up to `burst`; `take()` blocks until allowed.

    Each caller reserves its token under the lock and sleeps outside it, so waiting threads are
    served in arrival order without holding anyone else up.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be > 0")
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst) if burst is not None else max(1.0, self.rate_per_s)
        if self.burst < 1:
            raise ValueError("burst must be >= 1")
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._last = clock()
        self._lock = threading.Lock()

    def take(self) -> float:
        """Take one token, sleeping if needed; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            tokens = min(self.burst, self._tokens + (now - self._last) * self.rate_per_s)
            self._last = now
            tokens -= 1.0
            self._tokens = tokens
        if tokens >= 0:
            return 0.0
        wait = -tokens / self.rate_per_s
        self._sleep(wait)
        return wait

    def __repr__(self) -> str:
        return f"TokenBucket(rate_per_s={self.rate_per_s}, burst={self.burst})"
