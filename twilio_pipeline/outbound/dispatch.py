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
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from twilio_pipeline.channels import Channel
from twilio_pipeline.outbound.execution import execution_channel_sender
from twilio_pipeline.outbound.ledger import Claims, Item, OutcomeWriter
from twilio_pipeline.twilio import TwilioApiError

PROGRESS_EVERY_S = 0.5
LOG_EVERY_S = 5.0
_STOP = object()

Progress = Callable[[int, int, float], None]


@dataclass
class DispatchStats:
    requested: int = 0
    released: int = 0
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
                writer.result(item, result)
                done[slot] += 1

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
        if unsent and not (self.lease is not None and self.lease.lost.is_set()):
            stats.released = self.claims.release(unsent)
        elif unsent:
            self.log.warning(f"{len(unsent)} claimed message(s) were not requested and stay in flight: the run "
                             "that takes the execution over checks them at Twilio before sending anything")
        if errors:
            raise errors[0]
        return stats

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
