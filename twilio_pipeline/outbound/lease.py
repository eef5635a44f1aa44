"""Who is sending an execution: a database lease with a heartbeat, re-entrant within one run.

The lease (db.acquire_lease, TTL ~60 s) makes a second live run fail fast with ExecutionBusy, while a
run killed with SIGKILL blocks the next one for at most the TTL (at once on the same host, where its
dead pid is seen). A heartbeat thread renews it every TTL/3; if renewal fails past the TTL the lease
counts as lost and the sender stops, since another run may then own the execution.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from twilio_pipeline.db import Database
from twilio_pipeline.outbound.errors import ExecutionBusy, LeaseLost

_HELD: dict[tuple[int, str, str], "ExecutionLease"] = {}
_HELD_LOCK = threading.Lock()


def lease_key(execution_id: int) -> str:
    return f"outbound:{int(execution_id)}"


class ExecutionLease:
    """A held lease; `lost` is set when the heartbeat could not keep it."""

    def __init__(self, db: Database, execution_id: int, run_id: str, ttl_s: float, log=None):
        self.db = db
        self.execution_id = int(execution_id)
        self.run_id = run_id
        self.ttl_s = ttl_s
        self.key = lease_key(execution_id)
        self.lost = threading.Event()
        self.lost_reason: str | None = None
        self._stop = threading.Event()
        self._log = log
        self._thread: threading.Thread | None = None
        self._depth = 0

    def check(self) -> None:
        """Raise LeaseLost when the heartbeat lost the lease (stop before the next request batch)."""
        if self.lost.is_set():
            raise LeaseLost(f"run {self.run_id} lost its lease on execution {self.execution_id}: {self.lost_reason}")

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.key}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        interval = max(self.ttl_s / 3.0, 0.05)
        last_ok = time.monotonic()
        while not self._stop.wait(interval):
            try:
                if self.db.renew_lease(self.key, self.run_id, self.ttl_s):
                    last_ok = time.monotonic()
                    continue
                self.lost_reason = "another run took it over"
            except Exception as exc:  # noqa: BLE001 - a DB hiccup is retried until the TTL runs out
                self.lost_reason = f"renewal failed: {type(exc).__name__}: {exc}"
                if self._log is not None:
                    self._log.warning(f"lease renewal for execution {self.execution_id} failed: {self.lost_reason}")
                if time.monotonic() - last_ok < self.ttl_s * 0.9:
                    continue
            self.lost.set()
            return

    def _release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.db.release_lease(self.key, self.run_id)


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
    holder = db.acquire_lease(lease.key, run_id, ttl_s)
    if holder is not None:
        raise ExecutionBusy(int(execution_id), holder)
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
