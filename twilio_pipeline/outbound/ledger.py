"""The send ledger: outcomes and claims (the guard against double sends); the bulk outcome writer is
`outbound/outcomes.py`.

Protocol, per recipient row (ChannelExecutionID, RPContactID):

    planned --claim (committed: Outcome inflight, AttemptedAt, RunID)--> request --> sent | refused | ambiguous
    ambiguous --reconcile: Twilio has it--> sent        (SID adopted, nothing re-sent)
    ambiguous --reconcile: Twilio has not--> inflight --> request ...   (re-sent once per round)
    inflight left by a dead run --> ambiguous (then reconciled like any other)
    inflight --refused for the sender's/account's fault (21606 ...)--> back to planned (or ambiguous),
             with ErrorCode and Reason saying why: unsent, counted Pending, sent by a later run

A resend's claim (ambiguous -> inflight) keeps the row's AttemptedAt, the time of its first request: every
later look-up at Twilio searches from there, so a first message Twilio lists late is still found after a
resend that was refused or lost (a window starting at the resend would miss it and text the person twice).

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

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa

from twilio_pipeline.db import Database, utcnow
from twilio_pipeline.outbound.errors import LeaseLost

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
KEYS_PER_STATEMENT = 500  # well under SQL Server's 2,100 parameters and SQLite's 32,766
REASON_MAX = 400  # characters of a refusal's reason kept in the ledger


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
        """The rows this run just claimed with `token` (written to UpdatedAt by every claim)."""
        led = self.db.tables.ledger
        q = sa.select(led.c.RPContactID, led.c.ToNumber, led.c.Body, led.c.IsSeed, led.c.Segments).where(
            led.c.ChannelExecutionID == self.execution_id, led.c.Outcome == INFLIGHT,
            led.c.RunID == self.run_id, led.c.UpdatedAt == token)
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
        """Claim ambiguous rows Twilio was found not to have, for their resend (AttemptedAt kept: the first
        request's time, where every later look-up starts)."""
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
                    .values(Outcome=INFLIGHT, RunID=self.run_id, UpdatedAt=token)
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
            reason = f"not sent: Twilio refused the sender ({code}): {texts[(origin, code)]}"[:REASON_MAX]
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
