"""The worker pool: claimed Items -> one POST each, many in flight, results to the ledger writer.

Workers only call `client.create_message` and hand the result to the writer's queue: no database
work, no rendering, no logging per message (the CPU budget is ~1 ms per request, the bare loop's).
The client bounds what is in flight (adaptive limiter, token bucket, 429/21611 back-off); the pool
only keeps `max_concurrency` threads busy. The main thread claims ahead, reports progress and is
where a stop (callback error, worker error, lost lease, cancel, writer failure) is handled: requests
under way finish and are recorded, Items not yet requested go back to where they were claimed from -
except when the lease is lost: then they stay in flight (the database may be stalled, and the run that
takes over reconciles them). Every request first asks the lease (`may_send`): past its send deadline
the worker waits for a renewal instead of draining what it already claimed.

Sender errors (twilio.errors.SENDER_ERROR_CODES: 21606 From not owned, 21212, 21608 trial ...) blame the
channel, not the recipient: such a refusal is not recorded as a final outcome; the row is held back and,
when this batch run ends, returned unsent (Claims.hold_back: planned -> Pending, sent by a later run).
After `sender_error_limit` of them in a row (an acceptance or a recipient's refusal resets the count; an
ambiguous answer says nothing about the sender and leaves it) the pool stops, nothing
more is requested, and SenderRejected names the code. Fewer in a row (a hiccup) do not stop the send,
but their recipients are still held back for a later send: never recorded as refused, never dropped.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from twilio_pipeline.channels import Channel
from twilio_pipeline.outbound.execution import execution_channel_sender
from twilio_pipeline.outbound.ledger import Claims, Item
from twilio_pipeline.outbound.outcomes import OutcomeWriter
from twilio_pipeline.twilio import SENDER_ERROR_CODES, SenderRejected, TwilioApiError, is_sender_error

PROGRESS_EVERY_S = 0.5
LOG_EVERY_S = 5.0
_STOP = object()

Progress = Callable[[int, int, float], None]


@dataclass
class DispatchStats:
    requested: int = 0
    released: int = 0
    held_back: int = 0
    elapsed_s: float = 0.0


class Dispatcher:
    """Runs batches of Items through `workers` threads; re-usable for the main send and resends."""

    def __init__(self, client, channel: Channel, writer: OutcomeWriter, claims: Claims, *,
                 media_url: str | None, log, progress: Progress | None = None, lease=None,
                 workers: int | None = None):
        self.client = client
        self.writer = writer
        self.claims = claims
        self.log = log
        self.progress = progress
        self.lease = lease
        self.workers = max(1, int(workers or channel.max_concurrency))
        self.channel = channel
        self.sender_error_limit = channel.sender_error_limit
        self.sender_errors = Counter()  # code -> refusals held back, over every run of this dispatcher
        self._in_a_row = 0  # consecutive sender errors (kept across runs: resends continue the count)
        self._row_lock = threading.Lock()
        base = dict(execution_channel_sender(channel))
        base["ValidityPeriod"] = str(channel.validity_period_s)
        if media_url:
            base["MediaUrl"] = media_url
        self._base = base

    def run(self, batches: Iterable[list[Item]], total: int, label: str = "Sending") -> DispatchStats:
        """Send every Item of `batches` (pulled lazily, so claims stay just ahead of the workers)."""
        work: queue.Queue = queue.Queue(maxsize=max(self.workers * 4, 64))
        done = [0] * self.workers
        stop = threading.Event()
        errors: list[BaseException] = []
        unsent: list[Item] = []
        unsent_lock = threading.Lock()
        held: list[tuple[Item, int | None, str]] = []  # refused for the sender's fault: back to unsent
        base, client, writer, lease = self._base, self.client, self.writer, self.lease
        proceed = None if lease is None else (lambda: lease.may_send(stop))  # before each retry, too

        def worker(slot: int) -> None:
            while True:
                item = work.get()
                if item is _STOP:
                    return
                if stop.is_set() or (lease is not None and not lease.may_send(stop)):
                    stop.set()
                    with unsent_lock:
                        unsent.append(item)
                    continue
                params = dict(base)
                params["To"] = item.to
                params["Body"] = item.body
                try:
                    result = client.create_message(params, proceed)
                except TwilioApiError as exc:  # throttle budget spent, unreachable, credentials rejected:
                    with unsent_lock:          # Twilio did not take this request
                        unsent.append(item)
                        if not (lease is not None and (lease.lost.is_set() or lease.cancelled.is_set())):
                            errors.append(exc)  # else the lease's own reason is raised
                    stop.set()
                    continue
                except BaseException as exc:  # noqa: BLE001 - the item stays inflight (reconciled next run)
                    with unsent_lock:
                        errors.append(exc)
                    stop.set()
                    continue
                done[slot] += 1
                if result.refused and is_sender_error(result.error_code):
                    text = result.error_message or f"HTTP {result.http_status}"
                    stop_now = self._count_sender_error(result.error_code)
                    with unsent_lock:
                        held.append((item, result.error_code, text))
                        if stop_now and not any(isinstance(e, SenderRejected) for e in errors):
                            errors.append(self._sender_rejected(result.error_code, text, result.http_status))
                    if stop_now:
                        stop.set()
                    continue
                if not result.ambiguous:  # an answer that does not blame the sender ends the streak
                    with self._row_lock:
                        self._in_a_row = 0
                writer.result(item, result)

        threads = [threading.Thread(target=worker, args=(i,), name=f"send-{i}", daemon=True)
                   for i in range(self.workers)]
        for t in threads:
            t.start()
        started = time.monotonic()
        last_progress = last_log = started
        stats = DispatchStats()

        def tick(force: bool = False) -> None:
            nonlocal last_progress, last_log
            now = time.monotonic()
            if not force and now - last_progress < PROGRESS_EVERY_S:
                return
            last_progress = now
            finished = sum(done)
            rate = finished / (now - started) if now > started else 0.0
            if self.progress is not None:
                self.progress(finished, total, rate)
            elif now - last_log >= LOG_EVERY_S or (force and finished):
                last_log = now
                eta = f"{(total - finished) / rate:,.0f} s" if rate > 0 else "unknown"
                self.log.info(f"{label}: {finished:,} / {total:,} done, {rate:,.1f} messages/s, ETA {eta}")

        def checks() -> None:
            if self.lease is not None:
                self.lease.check()
            if self.writer.failed:
                raise self.writer.error

        batch: list[Item] = []
        pos = 0
        try:
            for batch in _lazy(batches, checks):
                pos = 0
                while pos < len(batch) and not stop.is_set():
                    try:
                        work.put(batch[pos], timeout=0.1)
                        pos += 1
                    except queue.Full:
                        checks()
                    tick()
                if stop.is_set():
                    break
            for _ in threads:
                while True:
                    try:
                        work.put(_STOP, timeout=0.1)
                        break
                    except queue.Full:
                        checks()
                        tick()
            for t in threads:
                while t.is_alive():
                    t.join(timeout=0.1)
                    checks()
                    tick()
            tick(force=True)
        except BaseException as exc:
            stop.set()
            errors.insert(0, exc)
        if stop.is_set() and not errors and self.lease is not None:
            try:  # a worker stopped because the lease said so (lost, cancelled): say why
                self.lease.check()
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)
        with unsent_lock:
            unsent.extend(batch[pos:])  # claimed, never queued
        if stop.is_set() or errors:
            self._drain(work, threads, unsent, unsent_lock)
        stats.requested = sum(done)
        stats.elapsed_s = time.monotonic() - started
        lost = self.lease is not None and self.lease.lost.is_set()
        if held:  # with a lost lease they stay inflight: the run that takes over looks them up, then resends
            self.sender_errors.update(code for _, code, _ in held)
            if not lost:
                stats.held_back = self.claims.hold_back(held)
            if not errors:
                self.log.warning(self._held_back_note(held))
        if unsent and not lost:
            stats.released = self.claims.release(unsent)
        elif unsent:
            self.log.warning(f"{len(unsent)} claimed message(s) were not requested and stay in flight: the run "
                             "that takes the execution over checks them at Twilio before sending anything")
        if errors:
            raise errors[0]
        return stats

    def _count_sender_error(self, code: int | None) -> bool:
        """One more sender error in a row; True once `sender_error_limit` is reached (stop the send)."""
        with self._row_lock:
            self._in_a_row += 1
            return self._in_a_row >= self.sender_error_limit

    def _sender_rejected(self, code: int | None, text: str, status: int | None) -> SenderRejected:
        what = SENDER_ERROR_CODES.get(code, "the sender or the account was refused")
        sender = (f"messaging_service_sid {self.channel.messaging_service_sid}" if self.channel.uses_service
                  else f"from_number {self.channel.from_number}")
        return SenderRejected(
            f"the send stopped: Twilio refused {self._in_a_row} message(s) in a row with sender error {code} "
            f"({what}): {text}; the recipients refused that way stay unsent (Pending). Fix channel "
            f"'{self.channel.name}' ({sender}) or the Twilio account, then send again",
            status=status, code=code)

    def _held_back_note(self, held: list[tuple[Item, int | None, str]]) -> str:
        codes = ", ".join(f"{c}: {n}" for c, n in sorted(Counter(c for _, c, _ in held).items(), key=str))
        return (f"{len(held)} recipient(s) refused for the sender's or the account's fault ({codes}), fewer than "
                f"sender_error_limit ({self.sender_error_limit}) in a row: they stay unsent (Pending) and a "
                "later send sends them")

    @staticmethod
    def _drain(work: queue.Queue, threads: list[threading.Thread], unsent: list[Item], lock: threading.Lock) -> None:
        """Stop the pool: queued Items are not sent; requests under way finish (their results recorded)."""
        while True:
            try:
                item = work.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                with lock:
                    unsent.append(item)
        for _ in threads:
            work.put(_STOP)
        for t in threads:
            t.join()


def _lazy(batches: Iterable[list[Item]], checks: Callable[[], None]):
    """Pull (claim) the next batch only when the workers need it, checking lease and writer first."""
    it = iter(batches)
    while True:
        checks()
        try:
            batch = next(it)
        except StopIteration:
            return
        yield batch
