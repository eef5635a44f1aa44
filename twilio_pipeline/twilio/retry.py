"""The retry policy of every Twilio request (the reason the client is safe to point at a busy account).

* "Not processed" failures are retried for every method: HTTP 429 / 20429 and, on POST Messages,
  21611 (sender queue full) until the request has waited the channel's `throttle_budget_s`; a
  connection that failed before the request was sent (refused, connect timeout, DNS) up to
  `max_attempts`.
* 5xx, read timeouts, resets after sending and unusable 2xx bodies are retried for GET only. On a
  POST they are *ambiguous* - Twilio may have acted - so POST Messages returns them as an
  `ambiguous` CreateResult (outbound fulfillment reconciles it by listing) and other POSTs raise
  `AmbiguousRequest`; nothing is re-POSTed blindly.
* Backoff is exponential with full jitter between `min_delay_s` and `max_delay_s` (tenacity's
  `wait_random_exponential`), except after a 429: that request was not processed and the adaptive
  limiter already keeps fewer in flight, so it is retried after 50 ms, doubling with jitter up to
  `max_delay_s`. `Retry-After` is honoured when present: in full for throttling (floored at
  `min_delay_s` so a zero header cannot spin, capped by what is left of the throttle budget), capped
  at `max_delay_s` for the other retriable errors.

The first attempt runs without any retry machinery (the send path is CPU-benchmarked against a bare
`requests.Session` loop); tenacity takes over only after a retriable failure. Which failure is
retriable for which method is decided where the attempt is written (the client's endpoints): an
attempt raises `transport.Failure` only for what may be repeated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_random_exponential

from twilio_pipeline.twilio.errors import MalformedResponse, TwilioApiError, TwilioUnavailable
from twilio_pipeline.twilio.transport import MALFORMED, NOT_SENT, THROTTLED, Failure, Transport

_THROTTLE_FLOOR_S = 0.05  # least wait between throttled attempts, so the budget always runs down
_T = TypeVar("_T")


@dataclass(frozen=True)
class RetrySettings:
    """The channel's `retry` key: attempts for retriable errors, backoff bounds, throttle budget."""

    max_attempts: int = 5
    min_delay_s: float = 1.0
    max_delay_s: float = 20.0
    throttle_budget_s: float = 600.0


class RetryPolicy:
    """Repeats an attempt after a `Failure`, pacing with tenacity, until the settings say stop; then
    one typed error (TwilioUnavailable, MalformedResponse) naming what kept failing."""

    def __init__(self, settings: RetrySettings, transport: Transport, sleep: Callable[[float], None]) -> None:
        self._settings = settings
        self._transport = transport
        self._sleep = sleep
        self._backoff = wait_random_exponential(
            multiplier=max(settings.min_delay_s, 0.1), min=settings.min_delay_s, max=settings.max_delay_s
        )
        # A 429 was not processed and the limiter already keeps fewer requests in flight: retry soon
        # (50 ms, doubling, full jitter) rather than after the channel's min_delay_s, which left a
        # long tail of parked messages behind every burst of 429s.
        self._throttle_backoff = wait_random_exponential(
            multiplier=_THROTTLE_FLOOR_S, min=_THROTTLE_FLOOR_S, max=max(settings.max_delay_s, _THROTTLE_FLOOR_S)
        )

    def call(self, attempt: Callable[[], _T], method: str, url: str) -> _T:
        """Run `attempt` once bare (the fast path), and through the retry loop only if it failed."""
        try:
            return attempt()
        except Failure as exc:
            first = exc
        return self.retry(attempt, first, method, url, None)

    def retry(
        self,
        attempt: Callable[[], _T],
        first: Failure | None,
        method: str,
        url: str,
        counter: list[int] | None,
    ) -> _T:
        """Repeat `attempt` after a retriable failure, pacing with tenacity.

        `first` is the failure the caller already saw; it is replayed as tenacity's first outcome so
        backoff and stop decisions count it without a new request. Throttling stops when the waits
        reach the throttle budget; the other kinds after `max_attempts` failures. `counter`, when
        given, is the caller's own attempt count (it increments it in `attempt`).
        """
        settings = self._settings
        transport = self._transport
        budget = max(0.0, settings.throttle_budget_s)
        pending = [first] if first is not None else []
        other_failures = [0]
        counted = counter if counter is not None else [0 if first is None else 1]

        def run() -> _T:
            if pending:
                raise pending.pop()
            if counter is None:
                counted[0] += 1
            return attempt()

        def wait(rs: RetryCallState) -> float:
            exc = rs.outcome.exception()
            if getattr(exc, "kind", None) == THROTTLED:
                remaining = budget - rs.idle_for
                if remaining <= 1e-6:
                    return 0.0
                if exc.retry_after is not None:
                    delay = max(exc.retry_after, settings.min_delay_s)
                elif exc.status == 429:
                    delay = self._throttle_backoff(rs)
                else:  # 21611, the sender's queue is full: it drains at the sender's rate, not in ms
                    delay = self._backoff(rs)
                return min(max(delay, _THROTTLE_FLOOR_S), remaining)
            if exc.retry_after is not None:
                return min(exc.retry_after, settings.max_delay_s)
            return self._backoff(rs)

        def stop(rs: RetryCallState) -> bool:
            exc = rs.outcome.exception()
            if exc.kind == THROTTLED:
                return budget - rs.idle_for <= 1e-6
            other_failures[0] += 1
            return other_failures[0] >= settings.max_attempts

        before_sleep = None
        if transport.tracing:
            def before_sleep(rs: RetryCallState) -> None:
                exc = rs.outcome.exception()
                transport.emit(
                    f"retry {method} {transport.show(url)} in {rs.upcoming_sleep:.2f} s after {exc.detail} "
                    f"(attempt {rs.attempt_number})"
                )

        retrying = Retrying(
            sleep=self._sleep,
            stop=stop,
            wait=wait,
            retry=retry_if_exception_type(Failure),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(run)
        except Failure as final:
            raise self._exhausted(final, method, url, counted[0], retrying.statistics.get("idle_for", 0.0)) from None

    def _exhausted(self, f: Failure, method: str, url: str, attempts: int, waited: float) -> TwilioApiError:
        shown = self._transport.show(url)
        detail = self._transport.redactor.redact(f.detail)
        if f.kind == MALFORMED:
            return MalformedResponse(detail, status=f.status, code=f.code, method=method, url=shown, attempts=attempts)
        if f.kind == THROTTLED:
            text = f"Twilio kept throttling the request ({detail}) for {waited:.0f} s, the channel's throttle budget"
        elif f.kind == NOT_SENT:
            text = f"Twilio could not be reached: {detail}"
        else:
            text = f"Twilio did not answer usefully: {detail}"
        return TwilioUnavailable(
            text, status=f.status, code=f.code, more_info=f.more_info, method=method, url=shown, attempts=attempts
        )
