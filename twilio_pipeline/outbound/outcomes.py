"""The outcome writer: one thread per send that records the answers of every request in bulk.

Workers hand it each request's result (or a SID reconciliation adopted); every few hundred rows or half
a second it bulk-loads them into a staging table and merges them into the ledger by one UPDATE ... FROM,
guarded by the fencing rule of `outbound/ledger.py`, in the same transaction as the Twilio_MessageIDs
rows of the accepted SIDs and the STOP rows of 21610 refusals (`twilio_pipeline.suppression`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa

from twilio_pipeline.channels import Channel
from twilio_pipeline.dates import to_naive_utc, twilio_time
from twilio_pipeline.db import Database, utcnow
from twilio_pipeline.outbound.ledger import AMBIGUOUS, INFLIGHT, REASON_MAX, REFUSED, SENT, Item
from twilio_pipeline.suppression import OPTED_OUT_CODE, record_refusals_as_stop
from twilio_pipeline.twilio import CreateResult


def _twilio_time(message: dict | None) -> datetime | None:
    if not message:
        return None
    return twilio_time(message.get("date_updated") or message.get("date_created"))


def _segments(message: dict | None) -> int | None:
    """num_segments when Twilio knows it (a Messaging Service answers 0 until it picks a sender)."""
    try:
        value = int((message or {}).get("num_segments") or 0)
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def _failure_code(message: dict) -> int | None:
    """Twilio's error code of a message found already failed or undelivered (an adopted one can be):
    its first state must carry it, as every Failed/Undelivered state does."""
    if message.get("status") not in ("failed", "undelivered"):
        return None
    code = message.get("error_code")
    if isinstance(code, int) and not isinstance(code, bool):
        return code
    return int(code) if isinstance(code, str) and code.strip().isdigit() else None


@dataclass
class WriterStats:
    sent: int = 0
    refused: int = 0
    ambiguous: int = 0
    adopted: int = 0
    segments: int = 0
    flushes: int = 0
    opted_out: int = 0
    unrecorded: int = 0  # answers whose row was no longer this run's (its lease was taken over)
    error_codes: Counter = field(default_factory=Counter)


class OutcomeWriter:
    """The single writer: workers hand it results; it records them in bulk.

    Each flush is one transaction: the ledger rows (guarded by their expected Outcome and this
    RunID, so a row taken over by another run is never overwritten), the Twilio_MessageIDs rows of
    the accepted SIDs (all of them: see the module's fencing rule), and TwilioSMS_Suppression STOP rows
    for 21610 refusals. `stats.unrecorded` counts answers no longer written to their ledger row.
    """

    def __init__(self, db: Database, channel: Channel, execution_id: int, run_id: str, stg: sa.Table,
                 flush_rows: int = 300, flush_interval_s: float = 0.5):
        self.db = db
        self.channel = channel
        self.execution_id = int(execution_id)
        self.run_id = run_id
        self.flush_rows = flush_rows
        self.flush_interval_s = flush_interval_s
        self.stats = WriterStats()
        self.error: BaseException | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self.stg = stg
        self._thread.start()

    # --- producer side (workers) -------------------------------------------------------------------
    def result(self, item: Item, result: CreateResult) -> None:
        self._queue.put((item, result, None))

    def adopt(self, item: Item, message: dict) -> None:
        """Reconciliation found the message of an ambiguous row: record its SID, nothing is re-sent."""
        self._queue.put((item, None, message))

    def sync(self) -> None:
        """Wait until everything handed over so far is committed (before reading the ledger back)."""
        done = threading.Event()
        self._queue.put(done)
        while not done.wait(0.1):
            if not self._thread.is_alive():
                break
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Flush everything handed over so far and stop; re-raises a write failure."""
        self._queue.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error

    @property
    def failed(self) -> bool:
        return self.error is not None

    # --- writer thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        batch: list = []
        deadline = time.monotonic() + self.flush_interval_s
        while True:
            timeout = max(deadline - time.monotonic(), 0.0)
            try:
                entry = self._queue.get(timeout=timeout) if batch else self._queue.get()
            except queue.Empty:
                entry = False
            if entry is None:
                self._flush_safely(batch)
                return
            if isinstance(entry, threading.Event):
                ok = self._flush_safely(batch)
                batch = []
                entry.set()
                if not ok:
                    return
                continue
            if entry is not False:
                if not batch:
                    deadline = time.monotonic() + self.flush_interval_s
                batch.append(entry)
            if batch and (len(batch) >= self.flush_rows or time.monotonic() >= deadline):
                if not self._flush_safely(batch):
                    return
                batch = []

    def _flush_safely(self, batch: list) -> bool:
        if not batch or self.error is not None:
            return self.error is None
        try:
            self._flush(batch)
        except BaseException as exc:  # noqa: BLE001 - handed to the sending thread, which re-raises it
            self.error = exc
            return False
        return True

    @staticmethod
    def staging_columns() -> list[sa.Column]:
        """The writer's per-run staging table: one flush of outcomes, merged by one UPDATE ... FROM."""
        return [
            sa.Column("RPContactID", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("Kind", sa.Unicode(20), nullable=False),
            sa.Column("MessageSID", sa.Unicode(64), nullable=True),
            sa.Column("MessageStatus", sa.Unicode(30), nullable=True),
            sa.Column("StatusAt", sa.DateTime, nullable=True),
            sa.Column("Segments", sa.Integer, nullable=True),
            sa.Column("ErrorCode", sa.Integer, nullable=True),
            sa.Column("Reason", sa.Unicode(REASON_MAX), nullable=True),
        ]

    def _merge(self, conn, now: datetime) -> int:
        """Staged outcomes -> ledger in one UPDATE ... FROM, each row guarded by the Outcome it must have:
        inflight under this RunID for a request's answer, ambiguous for an adopted SID, and for a SID this
        run was given also ambiguous under this RunID (a run that took over marked it orphaned)."""
        led, stg = self.db.tables.ledger, self.stg
        mine = led.c.RunID == self.run_id
        guard = sa.or_(
            sa.and_(stg.c.Kind == "adopt", led.c.Outcome == AMBIGUOUS),
            sa.and_(stg.c.Kind != "adopt", led.c.Outcome == INFLIGHT, mine),
            sa.and_(stg.c.Kind == SENT, led.c.Outcome == AMBIGUOUS, mine),
        )
        res = conn.execute(
            led.update()
            .where(led.c.ChannelExecutionID == self.execution_id, led.c.RPContactID == stg.c.RPContactID, guard)
            .values(
                Outcome=sa.case((stg.c.Kind == "adopt", SENT), else_=stg.c.Kind),
                MessageSID=stg.c.MessageSID, MessageStatus=stg.c.MessageStatus,
                StatusAt=sa.func.coalesce(stg.c.StatusAt, led.c.StatusAt),
                Segments=sa.func.coalesce(stg.c.Segments, led.c.Segments),
                ErrorCode=stg.c.ErrorCode, Reason=stg.c.Reason, UpdatedAt=now, RunID=self.run_id,
            )
        )
        return max(res.rowcount or 0, 0)

    def _flush(self, batch: list) -> None:
        now = utcnow()
        rows: dict[int, dict] = {}
        sids: list[str] = []
        stops: list[dict] = []
        stats = self.stats
        for item, result, adopted in batch:
            row = {"RPContactID": item.rpcontactid, "Kind": None, "MessageSID": None, "MessageStatus": None,
                   "StatusAt": None, "Segments": None, "ErrorCode": None, "Reason": None}
            if adopted is not None or (result is not None and result.accepted):
                message = adopted if adopted is not None else result.message
                segments = _segments(message)
                row.update(Kind="adopt" if adopted is not None else SENT, MessageSID=message["sid"],
                           MessageStatus=message.get("status"), StatusAt=_twilio_time(message) or now,
                           Segments=segments, ErrorCode=_failure_code(message))
                sids.append(message["sid"])
                stats.segments += segments or item.segments or 0
                if adopted is not None:
                    stats.adopted += 1
                else:
                    stats.sent += 1
            elif result.refused:
                row.update(Kind=REFUSED, ErrorCode=result.error_code,
                           Reason=(result.error_message or f"HTTP {result.http_status}")[:REASON_MAX])
                stats.refused += 1
                stats.error_codes[result.error_code] += 1
                if result.error_code == OPTED_OUT_CODE:
                    stops.append({"ToNumber": item.to, "ActivityDate": to_naive_utc(result.started_at)})
            else:
                row.update(Kind=AMBIGUOUS, Reason=(result.error_message or "no usable answer")[:REASON_MAX])
                stats.ambiguous += 1
            rows[item.rpcontactid] = row
        with self.db.begin() as conn:
            self.db.bulk_insert(conn, self.stg, list(rows.values()))
            stats.unrecorded += len(rows) - self._merge(conn, now)
            if sids:
                self._stage_message_ids(conn)
            if stops:
                stats.opted_out += record_refusals_as_stop(self.db, conn, self.channel, stops)
            conn.execute(self.stg.delete())
        stats.flushes += 1

    def _stage_message_ids(self, conn) -> None:
        """Accepted SIDs of this flush -> Twilio_MessageIDs (seeds are not tracked), whether or not their
        ledger row took them: a message Twilio holds is tracked so its states are synced, even when the
        run that got it had lost its lease and the row was meanwhile resolved another way."""
        led, stg = self.db.tables.ledger, self.stg
        # Joined on the ledger's primary key: the cost follows the flush, not the execution's size.
        source = sa.select(
            stg.c.MessageSID.label("MessageID"), led.c.RPContactID, led.c.ChannelExecutionID,
            sa.literal(self.channel.sender, sa.Unicode(64)).label("Sender"), led.c.ToNumber,
            stg.c.StatusAt.label("SentAt"), stg.c.MessageStatus.label("LastStatus"),
        ).select_from(stg.join(led, sa.and_(led.c.ChannelExecutionID == self.execution_id,
                                            led.c.RPContactID == stg.c.RPContactID))
        ).where(stg.c.Kind.in_([SENT, "adopt"]), led.c.IsSeed == sa.false(), stg.c.MessageSID.is_not(None))
        self.db.insert_missing(conn, self.db.tables.message_ids, source, match=["MessageID"])
