"""Reconciliation of ambiguous sends: ask Twilio before sending again - and never match on the body.

Twilio has no idempotency key on message creation, so a POST that got a 5xx, a timeout or a reset
may or may not have created the message, and such an answer carries no SID: a fetch by SID (which
finds a message at once) is impossible, only a listing can find it. Twilio documents neither how soon
a new message appears in `GET Messages` nor that bodies are kept (Message Redaction empties them). The rule:

1. Settle: an ambiguous row is looked up only once it has been quiet `reconcile.settle_s` (default 60 s)
   since the ambiguous answer was recorded (UpdatedAt; for rows a dead run left in flight, since they
   were marked), so a message Twilio made but does not list yet has time to appear.
2. Match without the body: list `Messages?To=<number>` (and `From=` for a number sender; no date filter,
   since DateSent stays empty while a message is queued) and keep messages with direction `outbound-api`,
   our sender (From, or MessagingServiceSid for a pool), and date_created within [claim time - skew, now
   + skew]. A message whose SID a ledger row or Twilio_MessageIDs already holds is attributed to that row.
   Any other message to that number from that sender in the window is adopted (its SID recorded, nothing
   re-sent): the earliest, one per row.
3. Only when none is found after settling is the row sent again (`reconcile.resend_unconfirmed: true`,
   then looked up again next round) or kept ambiguous - Unresolved in the results, looked up again by a
   later send - (`resend_unconfirmed: false`).

If Twilio behaves otherwise: a listing that lags more than settle_s can still cause a second text (raise
settle_s, or set resend_unconfirmed: false); a message sent to the same number from the same sender by
something other than this pipeline within the window is taken for ours (that recipient then gets no
text from this execution rather than two).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from twilio_pipeline.channels import Channel
from twilio_pipeline.dates import to_naive_utc
from twilio_pipeline.db import Database, utcnow
from twilio_pipeline.outbound.dispatch import Dispatcher
from twilio_pipeline.outbound.ledger import AMBIGUOUS, Claims, Item
from twilio_pipeline.outbound.outcomes import OutcomeWriter
from twilio_pipeline.twilio import CredentialsRejected, TwilioApiError, parse_twilio_date

PAGE_ROWS = 1000
CLOCK_SKEW = timedelta(minutes=2)
DEFAULT_SETTLE_S = 60.0  # the channel file's reconcile.settle_s default
SETTLE_POLL_S = 0.25
OUTBOUND_API = "outbound-api"
DEFAULT_ROUNDS = 3


@dataclass
class ReconcileStats:
    checked: int = 0
    adopted: int = 0
    resent: int = 0
    lookups_failed: int = 0
    extra_messages: int = 0
    unconfirmed: int = 0  # not found, kept unresolved (resend_unconfirmed: false)
    rounds: int = 0


@dataclass(slots=True)
class _Doubt:
    item: Item
    attempted_at: datetime | None
    updated_at: datetime | None


def _page(db: Database, execution_id: int, after: int | None, limit: int) -> list[_Doubt]:
    led = db.tables.ledger
    q = (sa.select(led.c.RPContactID, led.c.ToNumber, led.c.Body, led.c.IsSeed, led.c.Segments,
                   led.c.AttemptedAt, led.c.UpdatedAt)
         .where(led.c.ChannelExecutionID == execution_id, led.c.Outcome == AMBIGUOUS)
         .order_by(led.c.RPContactID).limit(limit))
    if after is not None:
        q = q.where(led.c.RPContactID > after)
    with db.connect() as conn:
        return [_Doubt(Item(int(r[0]), r[1], r[2] or "", bool(r[3]), r[4], AMBIGUOUS), r[5], r[6])
                for r in conn.execute(q)]


def _known_sids(db: Database, numbers: list[str]) -> set[str]:
    """SIDs already attributed to a known row for these numbers (ledger of any execution, Twilio_MessageIDs):
    never adopted by another row."""
    led, ids = db.tables.ledger, db.tables.message_ids
    out: set[str] = set()
    with db.connect() as conn:
        for start in range(0, len(numbers), 500):
            part = numbers[start:start + 500]
            out.update(r[0] for r in conn.execute(
                sa.select(led.c.MessageSID).where(led.c.ToNumber.in_(part), led.c.MessageSID.is_not(None))))
            out.update(r[0] for r in conn.execute(
                sa.select(ids.c.MessageID).where(ids.c.ToNumber.in_(part))))
    return out


class Reconciler:
    """Adopts or re-sends (or, with resend_unconfirmed false, keeps) the execution's ambiguous rows, in rounds."""

    def __init__(self, db: Database, client, channel: Channel, execution_id: int, *, writer: OutcomeWriter,
                 claims: Claims, dispatcher: Dispatcher, log, settle_s: float = DEFAULT_SETTLE_S,
                 rounds: int = DEFAULT_ROUNDS, skew: timedelta = CLOCK_SKEW, resend_unconfirmed: bool = True):
        self.db = db
        self.client = client
        self.channel = channel
        self.execution_id = int(execution_id)
        self.writer = writer
        self.claims = claims
        self.dispatcher = dispatcher
        self.log = log
        self.settle_s = settle_s
        self.rounds = max(1, rounds) if resend_unconfirmed else 1  # nothing changes between look-ups
        self.resend_unconfirmed = resend_unconfirmed
        self.skew = skew
        self.stats = ReconcileStats()

    def run(self) -> ReconcileStats:
        """Up to `rounds` look-ups; between them, rows Twilio does not have are sent again."""
        for round_no in range(1, self.rounds + 1):
            self.writer.sync()
            resend_allowed = self.resend_unconfirmed and round_no < self.rounds
            after = None
            any_rows = False
            while True:
                page = _page(self.db, self.execution_id, after, PAGE_ROWS)
                if not page:
                    break
                any_rows = True
                after = page[-1].item.rpcontactid
                self._settle(page)
                missing = self._look_up(page)
                self.writer.sync()
                if missing and not self.resend_unconfirmed:
                    self.stats.unconfirmed += len(missing)
                    self.log.warning(
                        f"{len(missing)} message(s) with an ambiguous answer were not found at Twilio after "
                        f"{self.settle_s:g} s; reconcile.resend_unconfirmed is false, so they stay Unresolved "
                        "and are not sent again")
                if missing and resend_allowed:
                    items = self.claims.from_ambiguous([i.rpcontactid for i in missing])
                    self.stats.resent += len(items)
                    self.dispatcher.run([items], total=len(items), label="Re-sending")
            if not any_rows:
                break
            self.stats.rounds = round_no
        self.writer.sync()
        return self.stats

    def _settle(self, page: list[_Doubt]) -> None:
        """Wait until every row of the page has been quiet settle_s (polling, so a lost lease stops it)."""
        latest = max((d.updated_at for d in page if d.updated_at is not None), default=None)
        if latest is None:
            return
        until = latest + timedelta(seconds=self.settle_s)
        lease = self.dispatcher.lease
        while True:
            wait = (until - utcnow()).total_seconds()
            if wait <= 0:
                return
            if lease is not None:
                lease.check()
            time.sleep(min(wait, SETTLE_POLL_S))

    def _look_up(self, page: list[_Doubt]) -> list[Item]:
        known = _known_sids(self.db, sorted({d.item.to for d in page if d.item.to}))
        workers = max(1, min(self.dispatcher.workers, 16))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reconcile") as pool:
            found = list(pool.map(lambda d: self._find(d, known), page))
        missing: list[Item] = []
        for doubt, (outcome, message, extra) in zip(page, found, strict=True):
            self.stats.checked += 1
            if outcome == "found":
                if message["sid"] in known:  # adopted by another row of this page: look again next round
                    continue
                known.add(message["sid"])
                self.writer.adopt(doubt.item, message)
                self.stats.adopted += 1
                if extra:
                    self.stats.extra_messages += extra
                    self.log.warning(
                        f"RPContactID {doubt.item.rpcontactid}: Twilio holds {extra + 1} matching messages to "
                        f"{doubt.item.to}; adopted the first ({message['sid']})")
            elif outcome == "missing":
                missing.append(doubt.item)
            else:
                self.stats.lookups_failed += 1
        return missing

    def _find(self, doubt: _Doubt, known: set[str]) -> tuple[str, dict | None, int]:
        """('found', message, extra matches) | ('missing', None, 0) | ('unknown', None, 0) when listing failed.

        Matches To, our sender, direction outbound-api and date_created in the window - never the body."""
        channel = self.channel
        since = (doubt.attempted_at or doubt.updated_at or utcnow()) - self.skew
        until = utcnow() + self.skew
        matches: list[tuple[datetime, dict]] = []
        try:
            for msg in self.client.iter_messages(to=doubt.item.to, from_=None if channel.uses_service else channel.from_number):
                sid = msg.get("sid")
                if not sid or sid in known or msg.get("direction") != OUTBOUND_API:
                    continue
                if msg.get("to") not in (None, doubt.item.to):
                    continue
                if channel.uses_service:
                    if msg.get("messaging_service_sid") != channel.messaging_service_sid:
                        continue
                elif msg.get("from") != channel.from_number:
                    continue
                created = to_naive_utc(parse_twilio_date(msg.get("date_created")))
                if created is None or not since <= created <= until:
                    continue
                matches.append((created, msg))
        except CredentialsRejected:
            raise
        except TwilioApiError as exc:
            self.log.warning(f"could not check RPContactID {doubt.item.rpcontactid} at Twilio ({exc}); "
                             "it stays unresolved and is not sent again")
            return "unknown", None, 0
        if not matches:
            return "missing", None, 0
        matches.sort(key=lambda m: (m[0], m[1]["sid"]))
        return "found", matches[0][1], len(matches) - 1
