"""Client-side flow control for Twilio requests.

Twilio limits REST concurrency per account and answers 429 / 20429 beyond it ("never processed,
safe to retry"). `AdaptiveLimiter` keeps fewer requests in flight after a burst of 429s and grows
back slowly (AIMD), so a send slows down to what the account allows instead of hammering the API.
`TokenBucket` enforces the channel's optional `requests_per_second`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class AdaptiveLimiter:
    """Concurrency limit that backs off on throttling and grows back by one per `limit` successes.

    The limit starts at `max_concurrency`. The first 429 halves it (the configured concurrency was
    above what the account allows: find the level fast); every later one cuts it by a quarter, so at
    the account's limit the sends oscillate between 3/4 of it and it (~7/8 on average) instead of
    between half of it and it. Cuts come at most once per cooldown, because the requests already in
    flight when Twilio starts refusing all come back 429 together and count as one signal: the
    cooldown is two round trips of a successful request (measured, 50 ms to 1 s), or `cooldown_s`
    when given. After `limit` consecutive successes the limit grows by one, never above
    `max_concurrency`.
    """

    FIRST_CUT = 0.5
    LATER_CUT = 0.75
    MIN_COOLDOWN_S = 0.05
    MAX_COOLDOWN_S = 1.0

    def __init__(
        self,
        max_concurrency: int,
        *,
        cooldown_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max(1, int(max_concurrency))
        self._limit = self._max
        self._in_flight = 0
        self._successes = 0
        self._fixed_cooldown_s = cooldown_s
        self._latency_s: float | None = None  # moving average of successful requests' latency
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

    @property
    def cooldown_s(self) -> float:
        if self._fixed_cooldown_s is not None:
            return self._fixed_cooldown_s
        if self._latency_s is None:
            return self.MAX_COOLDOWN_S
        return min(self.MAX_COOLDOWN_S, max(self.MIN_COOLDOWN_S, 2 * self._latency_s))

    def acquire(self) -> None:
        with self._cond:
            while self._in_flight >= self._limit:
                self._cond.wait()
            self._in_flight += 1

    def release(self, *, ok: bool = False, throttled: bool = False, latency_s: float | None = None) -> None:
        """Free a slot; `ok` counts a success towards growth (its `latency_s` paces the cooldown),
        `throttled` signals a 429."""
        with self._cond:
            self._in_flight -= 1
            if throttled:
                self._cut()
            elif ok:
                if latency_s is not None:
                    self._observe(latency_s)
                if self._limit < self._max:
                    self._grow()
            self._cond.notify()

    def on_success(self) -> None:
        with self._cond:
            if self._limit < self._max:
                self._grow()

    def on_throttle(self) -> None:
        with self._cond:
            self._cut()

    def _observe(self, latency_s: float) -> None:
        previous = self._latency_s
        self._latency_s = latency_s if previous is None else previous + 0.1 * (latency_s - previous)

    def _grow(self) -> None:
        self._successes += 1
        if self._successes >= self._limit:
            self._successes = 0
            self._limit += 1
            self._cond.notify()

    def _cut(self) -> None:
        self._successes = 0
        now = self._clock()
        if self._last_cut is not None and now - self._last_cut < self.cooldown_s:
            return
        factor = self.FIRST_CUT if self._last_cut is None else self.LATER_CUT
        self._last_cut = now
        self._limit = max(1, min(self._limit - 1, int(self._limit * factor)))

    def __enter__(self) -> AdaptiveLimiter:
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
