"""The send ledger: outcomes, claims and the bulk outcome writer (the guard against double sends).

Protocol, per recipient row (ChannelExecutionID, RPContactID):

    planned --claim (committed: Outcome inflight, AttemptedAt, RunID)--> request --> sent | refused | ambiguous
    ambiguous --reconcile: Twilio has it--> sent        (SID adopted, nothing re-sent)
    ambiguous --reconcile: Twilio has not--> inflight --> request ...   (re-sent once per round)
    inflight left by a dead run --> ambiguous (then reconciled like any other)
    inflight --refused for the sender's/account's fault (21606 ...)--> back to planned (or ambiguous),
             with ErrorCode and Reason saying why: unsent, counted Pending, sent by a later run

Claims are committed before any request of the batch goes out, so after a crash a row is either
untouched (planned), known (sent/refused), or in doubt (inflight/ambiguous) - never silently lost.

Fencing (the execution lease's token, see outbound/lease.py): every change of a row's owner - a claim
(planned/ambiguous -> inflight), a release (inflight -> planned/ambiguous) and the orphan rule (another
run's inflight -> ambiguous) - carries `lease still held with my token` in its own WHERE clause, so a run
that lost its lease claims and takes nothing (LeaseLost). An answer is written only to a row this run
claimed (RunID) and still in the state it left it in - inflight, or, for an accepted SID, ambiguous
because a run that took over marked it orphaned and has not resolved it yet (that is an adoption).
And a SID Twilio returned is never lost: it always goes to Twilio_MessageIDs for its recipient, even when
the row was meanwhile resolved otherwise, so its delivery states are synced.
Every write is in bulk: claims by RPContactID range (no parameter lists); outcomes from one writer
thread every few hundred rows or half a second, bulk-loaded into a staging table and merged by one
UPDATE ... FROM, in the same transaction as the Twilio_MessageIDs rows of the SIDs it records.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa

from twilio_pipeline.channels import Channel
from twilio_pipeline.db import Database, utcnow
from twilio_pipeline.db.database import to_naive_utc
from twilio_pipeline.outbound.errors import LeaseLost
from twilio_pipeline.twilio import CreateResult, parse_twilio_date

PLANNED = "planned"
INFLIGHT = "inflight"
SENT = "sent"
REFUSED = "refused"
AMBIGUOUS = "ambiguous"
INVALID = "invalid"
DUPLICATE = "duplicate"
SUPPRESSED = "suppressed"
NOT_RENDERED = "not_rendered"
ATTEMPTED = (SENT, REFUSED, AMBIGUOUS, INFLIGHT)
OPTED_OUT_CODE = 21610
KEYS_PER_STATEMENT = 500  # well under SQL Server's 2,100 parameters and SQLite's 32,766
_REASON_MAX = 400


def suppressed_select(db: Database, channel: Channel) -> sa.Select:
    """The numbers suppressed for the channel's sender (the inbound refresh's definition)."""
    from twilio_pipeline.inbound.refresh import suppressed_numbers

    return suppressed_numbers(db, channel)


@dataclass
class OutcomeCounts:
    counts: Counter = field(default_factory=Counter)
    segments: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def get(self, outcome: str) -> int:
        return self.counts.get(outcome, 0)

    @property
    def attempted(self) -> int:
        return sum(self.counts.get(o, 0) for o in ATTEMPTED)


@dataclass
class LedgerCounts:
    people: OutcomeCounts
    seeds: OutcomeCounts
    planned_ucs2: int = 0

    @property
    def planned_segments(self) -> int:
        return self.people.segments.get(PLANNED, 0) + self.seeds.segments.get(PLANNED, 0)


def ledger_counts(db: Database, execution_id: int) -> LedgerCounts:
    """Outcome counts and segments of an execution, recipients and seeds apart: one GROUP BY."""
    led = db.tables.ledger
    ucs2 = sa.func.sum(sa.case((sa.and_(led.c.Encoding == "UCS-2", led.c.Outcome == PLANNED), 1), else_=0))
    q = (sa.select(led.c.IsSeed, led.c.Outcome, sa.func.count(), sa.func.sum(led.c.Segments), ucs2)
         .where(led.c.ChannelExecutionID == int(execution_id))
         .group_by(led.c.IsSeed, led.c.Outcome))
    people, seeds, planned_ucs2 = OutcomeCounts(), OutcomeCounts(), 0
    with db.connect() as conn:
        for is_seed, outcome, count, segments, ucs in conn.execute(q):
            target = seeds if is_seed else people
            target.counts[outcome] += int(count)
            target.segments[outcome] += int(segments or 0)
            planned_ucs2 += int(ucs or 0)
    return LedgerCounts(people, seeds, planned_ucs2)


@dataclass(slots=True)
class Item:
    """One claimed recipient on its way to a request; `origin` is the Outcome it was claimed from."""

    rpcontactid: int
    to: str
    body: str
    is_seed: bool
    segments: int | None
    origin: str = PLANNED


class Claims:
    """Claims rows for one run: moves them to inflight (committed) and hands them out as Items.

    With a `lease` (an ExecutionLease) every write is fenced by its token; a fenced-out write raises
    LeaseLost instead of claiming nothing (which would read as "nothing left to send")."""

    def __init__(self, db: Database, execution_id: int, run_id: str, lease=None):
        self.db = db
        self.execution_id = int(execution_id)
        self.run_id = run_id
        self.lease = lease
        self._last_token: datetime | None = None

    def _fence(self) -> list[sa.ColumnElement]:
        if self.lease is None:
            return []
        return [self.db.lease_held(self.lease.key, self.run_id, self.lease.token)]

    def _fenced_out(self, conn) -> bool:
        """True (after the write matched nothing) when the lease is gone: raise rather than carry on."""
        if self.lease is None:
            return False
        return not conn.execute(sa.select(self._fence()[0])).scalar()

    def _lost(self) -> LeaseLost:
        return LeaseLost(f"run {self.run_id} no longer holds the lease on execution {self.execution_id} "
                         "(another run took it over): it claims and sends nothing more")

    def _token(self) -> datetime:
        """A claim timestamp unique within this run: the claimed rows are read back by it."""
        now = utcnow()
        if self._last_token is not None and now <= self._last_token:
            now = self._last_token + timedelta(microseconds=1)
        self._last_token = now
        return now

    def _claimed(self, conn, token: datetime, lo: int | None = None, hi: int | None = None) -> list[Item]:
        led = self.db.tables.ledger
        q = sa.select(led.c.RPContactID, led.c.ToNumber, led.c.Body, led.c.IsSeed, led.c.Segments).where(
            led.c.ChannelExecutionID == self.execution_id, led.c.Outcome == INFLIGHT,
            led.c.RunID == self.run_id, led.c.AttemptedAt == token)
        if lo is not None:
            q = q.where(led.c.RPContactID.between(lo, hi))
        return [Item(int(r[0]), r[1], r[2] or "", bool(r[3]), r[4]) for r in conn.execute(q.order_by(led.c.RPContactID))]

    def next_planned(self, limit: int) -> list[Item]:
        """Claim the next `limit` planned rows (lowest RPContactIDs: seeds first) in one UPDATE by range."""
        led = self.db.tables.ledger
        with self.db.begin() as conn:
            ids = conn.execute(
                sa.select(led.c.RPContactID)
                .where(led.c.ChannelExecutionID == self.execution_id, led.c.Outcome == PLANNED)
                .order_by(led.c.RPContactID).limit(limit)
            ).scalars().all()
            if not ids:
                return []
            lo, hi = int(ids[0]), int(ids[-1])
            token = self._token()
            res = conn.execute(
                led.update()
                .where(led.c.ChannelExecutionID == self.execution_id, led.c.Outcome == PLANNED,
                       led.c.RPContactID.between(lo, hi), *self._fence())
                .values(Outcome=INFLIGHT, AttemptedAt=token, RunID=self.run_id, UpdatedAt=token)
            )
            if not res.rowcount and self._fenced_out(conn):
                raise self._lost()
            return self._claimed(conn, token, lo, hi)

    def from_ambiguous(self, keys: list[int]) -> list[Item]:
        """Claim ambiguous rows Twilio was found not to have, for their resend."""
        led = self.db.tables.ledger
        items: list[Item] = []
        for start in range(0, len(keys), KEYS_PER_STATEMENT):
            part = keys[start:start + KEYS_PER_STATEMENT]
            with self.db.begin() as conn:
                token = self._token()
                res = conn.execute(
                    led.update()
                    .where(led.c.ChannelExecutionID == self.execution_id, led.c.Outcome == AMBIGUOUS,
                           led.c.RPContactID.in_(part), *self._fence())
                    .values(Outcome=INFLIGHT, AttemptedAt=token, RunID=self.run_id, UpdatedAt=token)
                )
                if not res.rowcount and self._fenced_out(conn):
                    raise self._lost()
                claimed = self._claimed(conn, token)
            for item in claimed:
                item.origin = AMBIGUOUS
            items.extend(claimed)
        return items

    def release(self, items: list[Item]) -> int:
        """Return claimed rows that were never requested to where they came from."""
        led = self.db.tables.ledger
        released = 0
        for origin in (PLANNED, AMBIGUOUS):
            keys = [i.rpcontactid for i in items if i.origin == origin]
            for start in range(0, len(keys), KEYS_PER_STATEMENT):
                part = keys[start:start + KEYS_PER_STATEMENT]
                values = dict(Outcome=origin, UpdatedAt=utcnow())
                if origin == PLANNED:
                    values.update(AttemptedAt=None, RunID=None)
                with self.db.begin() as conn:
                    res = conn.execute(
                        led.update()
                        .where(led.c.ChannelExecutionID == self.execution_id, led.c.Outcome == INFLIGHT,
                               led.c.RunID == self.run_id, led.c.RPContactID.in_(part), *self._fence())
                        .values(**values)
                    )
                released += max(res.rowcount or 0, 0)
        return released

    def hold_back(self, refused: list[tuple[Item, int | None, str]]) -> int:
        """Rows Twilio refused for the sender's or the account's fault ((item, code, text) each): nothing was
        created, and the recipient is not to blame, so they go back to where they were claimed from (planned
        -> counted Pending and sent by a later run; ambiguous -> looked up again), the code kept on the row."""
        led = self.db.tables.ledger
        groups: dict[tuple[str, int | None], list[Item]] = {}
        texts: dict[tuple[str, int | None], str] = {}
        for item, code, text in refused:
            groups.setdefault((item.origin, code), []).append(item)
            texts.setdefault((item.origin, code), text)
        held = 0
        for (origin, code), items in groups.items():
            reason = f"not sent: Twilio refused the sender ({code}): {texts[(origin, code)]}"[:_REASON_MAX]
            values = dict(Outcome=origin, ErrorCode=code, Reason=reason, UpdatedAt=utcnow())
            if origin == PLANNED:
                values.update(AttemptedAt=None, RunID=None)
            keys = [i.rpcontactid for i in items]
            for start in range(0, len(keys), KEYS_PER_STATEMENT):
                with self.db.begin() as conn:
                    res = conn.execute(
                        led.update()
                        .where(led.c.ChannelExecutionID == self.execution_id, led.c.Outcome == INFLIGHT,
                               led.c.RunID == self.run_id, led.c.RPContactID.in_(keys[start:start + KEYS_PER_STATEMENT]),
                               *self._fence())
                        .values(**values)
                    )
                held += max(res.rowcount or 0, 0)
        return held

    def orphans_to_ambiguous(self) -> int:
        """Rows left inflight by another (dead) run are in doubt: mark them ambiguous for reconciliation.

        Only call it holding the execution's lease (fenced by its token): then no live run has a request
        outstanding - a holder stops requesting half a TTL before its lease can expire. RunID is kept: the
        run that claimed a row may still record the SID Twilio gave it.
        """
        led = self.db.tables.ledger
        reason = sa.literal("left in flight by run ", sa.Unicode) + sa.func.coalesce(led.c.RunID, "?")
        with self.db.begin() as conn:
            res = conn.execute(
                led.update()
                .where(led.c.ChannelExecutionID == self.execution_id, led.c.Outcome == INFLIGHT, *self._fence())
                .values(Outcome=AMBIGUOUS, Reason=reason, UpdatedAt=utcnow())
            )
            if not res.rowcount and self._fenced_out(conn):
                raise self._lost()
        return max(res.rowcount or 0, 0)


def held_back_codes(db: Database, execution_id: int) -> Counter:
    """Error codes of the planned rows a send held back (refused for the sender's or account's fault)."""
    led = db.tables.ledger
    q = (sa.select(led.c.ErrorCode, sa.func.count())
         .where(led.c.ChannelExecutionID == int(execution_id), led.c.Outcome == PLANNED, led.c.ErrorCode.is_not(None))
         .group_by(led.c.ErrorCode))
    with db.connect() as conn:
        return Counter({int(code): int(n) for code, n in conn.execute(q)})


def _twilio_time(message: dict | None) -> datetime | None:
    if not message:
        return None
    return to_naive_utc(parse_twilio_date(message.get("date_updated") or message.get("date_created")))


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
            sa.Column("Reason", sa.Unicode(_REASON_MAX), nullable=True),
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
                           Reason=(result.error_message or f"HTTP {result.http_status}")[:_REASON_MAX])
                stats.refused += 1
                stats.error_codes[result.error_code] += 1
                if result.error_code == OPTED_OUT_CODE:
                    stops.append({"ToNumber": item.to, "ActivityDate": to_naive_utc(result.started_at)})
            else:
                row.update(Kind=AMBIGUOUS, Reason=(result.error_message or "no usable answer")[:_REASON_MAX])
                stats.ambiguous += 1
            rows[item.rpcontactid] = row
        with self.db.begin() as conn:
            self.db.bulk_insert(conn, self.stg, list(rows.values()))
            stats.unrecorded += len(rows) - self._merge(conn, now)
            if sids:
                self._stage_message_ids(conn)
            if stops:
                from twilio_pipeline.inbound.refresh import record_refusals_as_stop

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
