"""Who is sending an execution: a fenced database lease with a heartbeat, re-entrant within one run.

The lease (db.take_lease, TTL ~60 s) makes a second live run fail fast with ExecutionBusy, while a run
killed with SIGKILL blocks the next one for at most the TTL (at once on the same host, where its dead
pid is seen; a live pid on this host is never taken over, expired or not). Each take-over raises the
lease's fencing token, and every claim and orphan write of the ledger checks it in the same statement.

Exactly once when the database stalls rests on one rule: a holder makes no request after
`renewal start + SEND_FRACTION * TTL` (monotonic clock, renewal = the last one that succeeded), while the
database expires the row no earlier than `renewal write + TTL` (its own clock, and the write comes after
the start). A request made before that deadline has the rest of the TTL to finish before anyone can take
the execution over. Past the deadline workers wait for the next renewal; past the TTL the lease is lost
and the run stops (its claimed rows stay in flight for the next run to reconcile).

The heartbeat also reads SMS_ChannelExecutions.Status: an upstream that writes `cancelled` stops the send
within one beat (TTL/4: 15 s by default).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from twilio_pipeline.db import Database
from twilio_pipeline.db.database import LeaseHolder
from twilio_pipeline.outbound.errors import ExecutionBusy, ExecutionCancelled, LeaseLost
from twilio_pipeline.outbound.execution import STATUS_CANCELLED, read_execution

SEND_FRACTION = 0.5  # of the TTL after a renewal started: requests stop there until the next renewal
BEAT_FRACTION = 0.25  # of the TTL between renewals (and cancel checks)

_HELD: dict[tuple[int, str, str], ExecutionLease] = {}
_HELD_LOCK = threading.Lock()


def busy_holder(db: Database, execution_id: int) -> LeaseHolder | None:
    """The live run holding the execution's lease, or None (dead local pids and expired remote leases are free)."""
    return db.live_lease_holder(lease_key(execution_id))


def lease_key(execution_id: int) -> str:
    return f"outbound:{int(execution_id)}"


class ExecutionLease:
    """A held lease. `lost` is set once it can no longer be trusted, `cancelled` when the upstream
    cancelled the execution; `may_send()` gates every request."""

    def __init__(self, db: Database, execution_id: int, run_id: str, ttl_s: float, log=None):
        self.db = db
        self.execution_id = int(execution_id)
        self.run_id = run_id
        self.ttl_s = ttl_s
        self.key = lease_key(execution_id)
        self.token: int | None = None
        self.lost = threading.Event()
        self.lost_reason: str | None = None
        self.cancelled = threading.Event()
        self._renewed = threading.Condition()
        self._valid_from = time.monotonic()  # when the last successful renewal (or the take) started
        self._stop = threading.Event()
        self._log = log
        self._thread: threading.Thread | None = None
        self._depth = 0

    # --- the senders' side ----------------------------------------------------------------------
    @property
    def send_deadline(self) -> float:
        """Monotonic time after which no request may start until the lease is renewed."""
        return self._valid_from + self.ttl_s * SEND_FRACTION

    def _expire_if_overdue(self) -> None:
        if not self.lost.is_set() and time.monotonic() >= self._valid_from + self.ttl_s:
            self._lose(f"not renewed for {self.ttl_s:g} s (the database did not answer in time)")

    def check(self) -> None:
        """Raise LeaseLost or ExecutionCancelled: the run must stop sending."""
        self._expire_if_overdue()
        if self.lost.is_set():
            raise LeaseLost(f"run {self.run_id} lost its lease on execution {self.execution_id}: {self.lost_reason}")
        if self.cancelled.is_set():
            raise ExecutionCancelled(f"execution {self.execution_id} was cancelled (Status {STATUS_CANCELLED!r}): "
                                     "no further message is sent")

    def may_send(self, stop: threading.Event | None = None) -> bool:
        """True when a request may start now. Past the send deadline it waits for the next renewal;
        False once the lease is lost, the execution cancelled or `stop` set (the item is not sent)."""
        while True:
            if self.cancelled.is_set() or (stop is not None and stop.is_set()):
                return False
            now = time.monotonic()
            if now < self.send_deadline and not self.lost.is_set():
                return True
            self._expire_if_overdue()
            if self.lost.is_set():
                return False
            with self._renewed:  # woken by a renewal, a loss or a cancel; the timeout covers `stop`
                self._renewed.wait(timeout=0.05)

    # --- heartbeat --------------------------------------------------------------------------------
    def _lose(self, reason: str) -> None:
        if self.lost.is_set():
            return
        self.lost_reason = reason
        self.lost.set()
        if self._log is not None:
            self._log.warning(f"run {self.run_id} stops sending execution {self.execution_id}: lease lost ({reason})")
        with self._renewed:
            self._renewed.notify_all()

    def _read_status(self) -> None:
        row = read_execution(self.db, self.execution_id)
        if row is not None and row.status == STATUS_CANCELLED and not self.cancelled.is_set():
            self.cancelled.set()
            if self._log is not None:
                self._log.warning(f"execution {self.execution_id} was cancelled upstream: stopping the send")
            with self._renewed:
                self._renewed.notify_all()

    def _start(self) -> None:
        with suppress(Exception):  # the heartbeat reads it again
            self._read_status()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.key}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        interval = max(self.ttl_s * BEAT_FRACTION, 0.05)
        while not self._stop.wait(interval):
            started = time.monotonic()
            try:
                held = self.db.renew_lease(self.key, self.run_id, self.ttl_s, token=self.token)
            except Exception as exc:  # noqa: BLE001 - a DB hiccup is retried until the TTL runs out
                if self._log is not None:
                    self._log.warning(f"lease renewal for execution {self.execution_id} failed: "
                                      f"{type(exc).__name__}: {exc}")
                self._expire_if_overdue()
                if self.lost.is_set():
                    return
                continue
            if not held:
                self._lose("another run took it over")
                return
            self._expire_if_overdue()  # a renewal that returns after the TTL cannot undo a stop
            if self.lost.is_set():
                return
            with self._renewed:
                self._valid_from = started
                self._renewed.notify_all()
            with suppress(Exception):  # read again next beat
                self._read_status()

    def _release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.db.release_lease(self.key, self.run_id, token=self.token)


@contextmanager
def execution_lease(db: Database, execution_id: int, run_id: str, ttl_s: float = 60.0, log=None
                    ) -> Iterator[ExecutionLease]:
    """Hold the execution for `run_id`, or raise ExecutionBusy naming the live holder.

    Re-entrant for the same run in the same process (the Dagster asset and send_execution may both
    take it): only the outermost holder acquires and releases.
    """
    ident = (id(db), lease_key(execution_id), run_id)
    with _HELD_LOCK:
        held = _HELD.get(ident)
        if held is not None:
            held._depth += 1
    if held is not None:
        try:
            yield held
        finally:
            with _HELD_LOCK:
                held._depth -= 1
        return
    lease = ExecutionLease(db, execution_id, run_id, ttl_s, log)
    started = time.monotonic()
    token, holder = db.take_lease(lease.key, run_id, ttl_s)
    if holder is not None:
        raise ExecutionBusy(int(execution_id), holder)
    lease.token = token
    lease._valid_from = started
    lease._depth = 1
    with _HELD_LOCK:
        _HELD[ident] = lease
    lease._start()
    try:
        yield lease
    finally:
        with _HELD_LOCK:
            _HELD.pop(ident, None)
        lease._release()
