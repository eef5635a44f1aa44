"""AdaptiveLimiter (AIMD concurrency) and TokenBucket (requests per second)."""

from __future__ import annotations

import threading
import time

import pytest

from twilio_pipeline.twilio import AdaptiveLimiter, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_limiter_halves_on_the_first_429_burst_then_cuts_by_a_quarter_once_per_cooldown():
    clock = Clock()
    lim = AdaptiveLimiter(16, cooldown_s=1.0, clock=clock)
    assert lim.current_limit == 16
    for _ in range(10):  # one burst: every in-flight request comes back 429 at once
        lim.on_throttle()
    assert lim.current_limit == 8  # the configured concurrency was too high: find the level fast
    clock.now += 1.5
    lim.on_throttle()
    assert lim.current_limit == 6  # near the account's limit: a gentler cut
    clock.now += 1.5
    lim.on_throttle()
    assert lim.current_limit == 4
    for _ in range(4):  # +1 after `limit` consecutive successes
        lim.on_success()
    assert lim.current_limit == 5
    for _ in range(4):
        lim.on_success()
    assert lim.current_limit == 5  # needs 5 now
    lim.on_success()
    assert lim.current_limit == 6
    for _ in range(1000):
        lim.on_success()
    assert lim.current_limit == 16  # never above max


def test_limiter_at_the_account_limit_keeps_most_of_it():
    """Throttled each time it grows one past an account limit of 20, the limit stays between 15 and 20
    (the old halving left it between 10 and 20: a quarter less throughput)."""
    clock = Clock()
    lim = AdaptiveLimiter(100, cooldown_s=0.0, clock=clock)
    seen = []
    for _ in range(2000):
        clock.now += 0.01
        if lim.current_limit > 20:
            lim.on_throttle()
        else:
            lim.on_success()
        seen.append(lim.current_limit)
    steady = seen[500:]
    assert min(steady) >= 15 and max(steady) <= 21
    assert sum(steady) / len(steady) >= 17.5


def test_cooldown_is_two_round_trips_of_a_successful_request():
    clock = Clock()
    lim = AdaptiveLimiter(64, clock=clock)
    assert lim.cooldown_s == 1.0  # nothing measured yet
    for _ in range(50):
        lim.acquire()
        lim.release(ok=True, latency_s=0.1)
    assert lim.cooldown_s == pytest.approx(0.2)
    lim.on_throttle()
    assert lim.current_limit == 32
    clock.now += 0.15
    lim.on_throttle()  # still the same burst
    assert lim.current_limit == 32
    clock.now += 0.1
    lim.on_throttle()
    assert lim.current_limit == 24
    for _ in range(50):
        lim.acquire()
        lim.release(ok=True, latency_s=0.001)
    assert lim.cooldown_s == AdaptiveLimiter.MIN_COOLDOWN_S  # floored: never a cut per request


def test_limiter_never_below_one():
    clock = Clock()
    lim = AdaptiveLimiter(2, cooldown_s=0.0, clock=clock)
    for _ in range(5):
        clock.now += 1
        lim.on_throttle()
    assert lim.current_limit == 1


def test_throttle_resets_success_streak():
    clock = Clock()
    lim = AdaptiveLimiter(8, cooldown_s=10.0, clock=clock)
    lim.on_throttle()  # 4
    for _ in range(3):
        lim.on_success()
    lim.on_throttle()  # within cooldown: no cut, but the streak starts over
    for _ in range(3):
        lim.on_success()
    assert lim.current_limit == 4
    lim.on_success()
    assert lim.current_limit == 5


def test_limiter_blocks_beyond_limit_and_release_wakes():
    lim = AdaptiveLimiter(2)
    lim.acquire()
    lim.acquire()
    got = threading.Event()

    def third():
        with lim:
            got.set()

    t = threading.Thread(target=third, daemon=True)
    t.start()
    assert not got.wait(0.1)
    lim.release(ok=True)
    assert got.wait(2.0)
    t.join(2.0)
    lim.release()
    assert lim.in_flight == 0


def test_limiter_release_throttled_cuts_limit():
    lim = AdaptiveLimiter(10)
    lim.acquire()
    lim.release(throttled=True)
    assert lim.current_limit == 5 and lim.in_flight == 0


def test_token_bucket_paces_after_burst():
    clock = Clock()
    waits: list[float] = []

    def sleep(s: float) -> None:
        waits.append(s)

    bucket = TokenBucket(10.0, burst=2, clock=clock, sleep=sleep)
    assert bucket.take() == 0.0 and bucket.take() == 0.0
    assert bucket.take() == pytest.approx(0.1)
    assert bucket.take() == pytest.approx(0.2)  # reservations queue up
    clock.now += 1.0
    assert bucket.take() == 0.0
    assert waits == [pytest.approx(0.1), pytest.approx(0.2)]


@pytest.mark.slow
def test_token_bucket_real_rate():
    bucket = TokenBucket(200.0, burst=1)
    t0 = time.monotonic()
    for _ in range(21):
        bucket.take()
    assert time.monotonic() - t0 >= 0.09
