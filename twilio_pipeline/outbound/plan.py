"""Step 3: dedupe and validation of an execution's audience into the send ledger (the plan).

The contacts are read in chunks (pandas `read_sql`) in RPContactID order, one row kept per contact
(`_Contacts`: deterministic, the others counted as Duplicates), numbers normalised per distinct spelling,
bodies rendered and their segments counted in Python; each chunk goes into a staging table. NUL, control
characters and invalid Unicode are refused here, per recipient, so the bulk load never receives them. Everything that
needs the whole audience - duplicates (lowest RPContactID wins), numbers already in the ledger,
suppression - is then one INSERT ... SELECT in the database, so memory stays bounded by the chunk
size whatever the audience size.

Idempotent: a contact that already has a ledger row is never re-planned. Contacts added to
OfferHistorySG after an earlier plan are planned on the next run; one whose number is already in
the execution's ledger counts as a duplicate (the earlier row was decided, perhaps sent, first).
"""

from __future__ import annotations

import itertools
import math
import re
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import phonenumbers
import sqlalchemy as sa
from phonenumbers import PhoneNumber

from twilio_pipeline.channels import Channel
from twilio_pipeline.db import Database, utcnow
from twilio_pipeline.db.database import lenient_text, undecodable
from twilio_pipeline.outbound.errors import OutboundInputError
from twilio_pipeline.outbound.execution import (
    STATUS_SENDING,
    execution_problem,
    mark_failed,
    read_execution,
    sender_problem,
    set_status,
)
from twilio_pipeline.outbound.interaction_log import InteractionLog
from twilio_pipeline.outbound.ledger import (
    DUPLICATE,
    INVALID,
    NOT_RENDERED,
    PLANNED,
    SUPPRESSED,
    ledger_counts,
)
from twilio_pipeline.rules.phones import PhoneResult, normalise_number
from twilio_pipeline.rules.render import (
    Rendered,
    merge_fields,
    parse_attributes,
    render_body,
    storable,
    text_problem,
)
from twilio_pipeline.rules.segments import count_segments
from twilio_pipeline.summary import Summary
from twilio_pipeline.suppression import suppressed_numbers

if TYPE_CHECKING:  # pandas is imported where a plan reads its recipients: ~0.3 s that every run worker,
    import pandas as pd  # the code server and the CLI would otherwise pay on import without using it

CHUNK_ROWS = 20_000
_ADDRESS_MAX = 200
_REASON_MAX = 400
_slow_parse = normalise_number.__wrapped__  # uncached: the planner keeps its own per-chunk cache
_NANP_E164 = re.compile(r"\+1[2-9]\d{9}")


def _parse_number(raw: str | None, region: str | None) -> PhoneResult:
    """rules/phones.normalise_number, with a fast path for canonical +1 numbers (7x cheaper).

    For country code 1 a canonical `+1NXXNXXXXXX` is exactly what the full parse returns when the
    number is possible (stripping NANP's national prefix "1" would leave 9 digits, too short to be
    kept), so the fast path cannot disagree; everything else takes the full parse.
    """
    if raw is not None and _NANP_E164.fullmatch(raw):
        number = PhoneNumber(country_code=1, national_number=int(raw[2:]))
        if phonenumbers.is_possible_number_with_reason(number) == phonenumbers.ValidationResult.IS_POSSIBLE:
            return PhoneResult(raw, None)
    return _slow_parse(raw, region)


@dataclass
class PlanSummary(Summary):
    execution_id: int
    channel: str
    count_before_dedup: int = 0
    count_after_dedup: int = 0
    duplicates: int = 0
    invalid_numbers: int = 0
    unsubscribed: int = 0
    not_rendered: int = 0
    to_send: int = 0
    already_attempted: int = 0
    seeds: int = 0
    seeds_to_send: int = 0
    invalid_seeds: int = 0
    unsubscribed_seeds: int = 0
    newly_planned: int = 0
    newly_suppressed: int = 0
    segments_to_send: int = 0
    ucs2_messages: int = 0
    interaction_log: str = ""


def _staging_columns() -> list[sa.Column]:
    return [
        sa.Column("RPContactID", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("IsSeed", sa.Boolean, nullable=False),
        sa.Column("AddressKey", sa.Unicode(_ADDRESS_MAX), nullable=True),
        sa.Column("ToNumber", sa.Unicode(64), nullable=True),
        sa.Column("Body", sa.UnicodeText, nullable=True),
        sa.Column("Segments", sa.Integer, nullable=True),
        sa.Column("Encoding", sa.Unicode(10), nullable=True),
        sa.Column("Reason", sa.Unicode(_REASON_MAX), nullable=True),
    ]


class _Renderer:
    """Renders bodies and counts segments; remembers the first character that forced UCS-2."""

    def __init__(self, template: str | None, channel: Channel, media_url: str | None):
        self.template = template or ""
        self.fields = merge_fields(self.template)
        self.append = channel.append_opt_out
        self.media = bool(media_url)
        self.ucs2_example: tuple[int, str] | None = None
        self._static = None if self.fields else self._fix(render_body(self.template, {}, self.append))
        self._segments: dict[str, tuple[int, str, str | None]] = {}

    @property
    def static_problem(self) -> str | None:
        """Why a MessageBody without merge fields cannot be texted to anyone (empty, over 1,600), or None."""
        if self._static is None or self._static.body is not None:
            return None
        return f"MessageBody cannot be texted to anyone: {self._static.reason}"

    def _fix(self, rendered):
        # An MMS may carry no text at all: its media is the message.
        if rendered.body is None and self.media and not self.template.strip():
            return Rendered("", None)
        return rendered

    def render(self, attributes_text, seed_attributes: dict | None = None):
        if seed_attributes is not None:
            return self._fix(render_body(self.template, seed_attributes, self.append, missing_as_placeholder=True))
        if self._static is not None:
            return self._static
        attributes, problem = parse_attributes(None if _missing(attributes_text) else attributes_text)
        if problem:
            return Rendered(None, problem)
        return self._fix(render_body(self.template, attributes, self.append))

    def segments(self, rid: int, body: str) -> tuple[int, str]:
        cached = self._segments.get(body)
        if cached is None:
            if len(self._segments) > 50_000:
                self._segments.clear()
            count = count_segments(body)
            segments = max(count.segments, 1) if self.media else count.segments
            cached = (segments, count.encoding, count.first_non_gsm)
            self._segments[body] = cached
        segments, encoding, first = cached
        if first is not None and self.ucs2_example is None:
            self.ucs2_example = (rid, first)
        return segments, encoding


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _contacts_query(db: Database, execution_id: int, with_attributes: bool) -> sa.Select:
    oh, led = db.tables.offer_history, db.tables.ledger
    planned = sa.select(sa.literal(1)).select_from(led).where(
        led.c.ChannelExecutionID == execution_id, led.c.RPContactID == oh.c.RPContactID)
    cols = [oh.c.RPContactID, oh.c.AddressKey] + ([oh.c.Attributes] if with_attributes else [])
    return (sa.select(*cols)
            .where(oh.c.ChannelExecutionID == execution_id, ~planned.exists())
            .order_by(oh.c.RPContactID))


class _Contacts:
    """Turns the audience, read in RPContactID order, into staging rows: one per RPContactID.

    Rows sharing an RPContactID are adjacent; the rows of the last ID of a chunk wait for the next chunk,
    so the choice never depends on where a chunk ends. The kept row is the first in this order
    (README "Dedupe"): a valid number before an invalid one, then the lowest AddressKey, then the lowest
    Attributes (code-point order, NULL last); the others are Duplicates, counted by `repeated_rows`.
    """

    def __init__(self, renderer: _Renderer, region: str | None):
        self.renderer = renderer
        self.region = region
        self.numbers: dict = {}
        self.carry: list[tuple[int, str | None, object]] = []
        self.repeats = 0

    def _number(self, raw: str | None) -> PhoneResult:
        result = self.numbers.get(raw)
        if result is None:
            if len(self.numbers) > 200_000:
                self.numbers.clear()
            problem = text_problem(raw, "the number") if raw is not None else None
            result = PhoneResult(None, problem) if problem else _parse_number(raw, self.region)
            self.numbers[raw] = result
        return result

    def _key(self, row: tuple[int, str | None, object]):
        _rid, raw, attrs = row
        return (self._number(raw).e164 is None, raw is None, raw or "", _missing(attrs),
                "" if _missing(attrs) else str(attrs))

    def chunk(self, frame: pd.DataFrame | None) -> list[dict]:
        """One chunk of contacts (None: the end of the audience) -> staging rows."""
        pending = self.carry
        if frame is not None:
            ids = frame["RPContactID"].astype("int64").tolist()
            addresses = frame["AddressKey"].astype(object).tolist()
            attributes = (frame["Attributes"].astype(object).tolist() if "Attributes" in frame
                          else [None] * len(ids))
            pending = pending + [(rid, None if _missing(raw) else str(raw), attrs)
                                 for rid, raw, attrs in zip(ids, addresses, attributes, strict=True)]
        if frame is not None and pending:
            last = pending[-1][0]
            cut = len(pending)
            while cut > 0 and pending[cut - 1][0] == last:
                cut -= 1
            pending, self.carry = pending[:cut], pending[cut:]
        else:
            self.carry = []
        rows = []
        i = 0
        while i < len(pending):
            j = i + 1
            while j < len(pending) and pending[j][0] == pending[i][0]:
                j += 1
            kept = pending[i] if j == i + 1 else min(pending[i:j], key=self._key)
            self.repeats += j - i - 1
            rows.append(self._row(*kept))
            i = j
        return rows

    def _row(self, rid: int, raw: str | None, attrs) -> dict:
        result = self._number(raw)
        row = {"RPContactID": rid, "IsSeed": False,
               "AddressKey": raw[:_ADDRESS_MAX] if raw is not None else None,
               "ToNumber": result.e164, "Body": None, "Segments": None, "Encoding": None, "Reason": None}
        if result.e164 is None:  # a number with a NUL or invalid Unicode is invalid: only these may need storable
            row["AddressKey"] = storable(row["AddressKey"]) if raw is not None else None
            row["Reason"] = storable(f"invalid number: {result.reason}"[:_REASON_MAX])
        else:
            rendered = self.renderer.render(attrs)
            if rendered.body is None:
                row["Reason"] = storable(f"not rendered: {rendered.reason}"[:_REASON_MAX])
            else:
                row["Body"] = rendered.body
                row["Segments"], row["Encoding"] = self.renderer.segments(rid, rendered.body)
        return row


def repeated_rows(db: Database, execution_id: int, people: int | None = None) -> int:
    """OfferHistorySG rows that repeat an RPContactID of the execution: each is a Duplicate (the ledger
    holds one row per contact), so that every input row counts once in CountBeforeDedup.

    `people`: the execution's non-seed ledger rows. When the audience has exactly that many rows, none
    repeats: one index count (~0.05 s for a million rows) instead of a COUNT(DISTINCT) (~0.7 s)."""
    oh = db.tables.offer_history
    mine = oh.c.ChannelExecutionID == int(execution_id)
    with db.connect() as conn:
        if people is not None and conn.execute(sa.select(sa.func.count()).where(mine)).scalar() == people:
            return 0
        return int(conn.execute(sa.select(sa.func.count() - sa.func.count(sa.distinct(oh.c.RPContactID)))
                                .where(mine)).scalar() or 0)


def _stage_contacts(db: Database, stg: sa.Table, query: sa.Select, renderer: _Renderer, region: str | None,
                    chunk_rows: int) -> tuple[int, int]:
    """Stream the unplanned contacts into staging; returns (rows staged, rows repeating an RPContactID)."""
    for lenient in (False, True):
        contacts = _Contacts(renderer, region)
        staged = 0
        try:
            with db.connect() as read_conn, (lenient_text(read_conn) if lenient else nullcontext()):
                read_conn = read_conn.execution_options(stream_results=True, max_row_buffer=chunk_rows)
                for frame in itertools.chain(_read_sql(query, read_conn, chunksize=chunk_rows), [None]):
                    rows = contacts.chunk(frame)
                    del frame
                    if rows:
                        with db.begin() as conn:
                            staged += db.bulk_insert(conn, stg, rows)
            return staged, contacts.repeats
        except Exception as exc:
            if lenient or not undecodable(exc):
                raise
            with db.begin() as conn:  # start again, reading invalid UTF-8 as something we can refuse
                conn.execute(stg.delete())
    raise AssertionError("unreachable")


SEED_ID_BASE = -(2**62)  # seeds are ledger rows SEED_ID_BASE - 1, - 2, ...: any real contact key stays free


def _has_seed_rows(db: Database, execution_id: int) -> bool:
    led = db.tables.ledger
    with db.connect() as conn:
        return conn.execute(sa.select(sa.literal(1)).where(
            led.c.ChannelExecutionID == execution_id, led.c.IsSeed == sa.true()).limit(1)).first() is not None


def _seed_rows(channel: Channel, renderer: _Renderer, ilog: InteractionLog) -> list[dict]:
    """Seeds as ledger rows SEED_ID_BASE - 1, - 2, ... in channel order; a seed listed twice is sent once.

    Far below any contact key an upstream uses, so a contact with a negative RPContactID (-1 as "unknown"
    is common) never collides with a seed. An execution planned before used -1, -2, ...: its seeds are
    never staged again (plan_execution checks), so they are not sent twice."""
    rows, seen = [], set()
    for i, raw in enumerate(channel.seeds, start=1):
        result = _parse_number(raw, channel.default_region)
        row = {"RPContactID": SEED_ID_BASE - i, "IsSeed": True, "AddressKey": str(raw)[:_ADDRESS_MAX],
               "ToNumber": result.e164, "Body": None, "Segments": None, "Encoding": None, "Reason": None}
        if result.e164 is None:
            row["Reason"] = f"invalid seed number: {result.reason}"[:_REASON_MAX]
        elif result.e164 in seen:
            ilog.warning(f"seed {raw} is listed twice; it is sent once")
            continue
        else:
            seen.add(result.e164)
            rendered = renderer.render(None, seed_attributes=dict(channel.seed_attributes))
            if rendered.body is None:
                row["Reason"] = f"not rendered: {rendered.reason}"[:_REASON_MAX]
            else:
                row["Body"] = rendered.body
                row["Segments"], row["Encoding"] = renderer.segments(SEED_ID_BASE - i, rendered.body)
        rows.append(row)
    return rows


def _merge_into_ledger(db: Database, channel: Channel, execution_id: int, stg: sa.Table, run_id: str) -> int:
    """Staging -> ledger in one INSERT ... SELECT: outcome and reason decided by SQL over the whole audience."""
    led = db.tables.ledger
    s, s2, other = stg.alias("s"), stg.alias("s2"), led.alias("l")
    first_id = (sa.select(sa.func.min(s2.c.RPContactID))
                .where(s2.c.ToNumber == s.c.ToNumber, s2.c.IsSeed == sa.false()).scalar_subquery())
    in_ledger = sa.select(sa.literal(1)).select_from(other).where(
        other.c.ToNumber == s.c.ToNumber, other.c.ChannelExecutionID == execution_id,
        other.c.IsSeed == sa.false()).exists()
    duplicate = sa.and_(s.c.IsSeed == sa.false(), s.c.ToNumber.is_not(None),
                        sa.or_(first_id < s.c.RPContactID, in_ledger))
    suppressed = s.c.ToNumber.in_(suppressed_numbers(db, channel))
    outcome = sa.case(
        (s.c.ToNumber.is_(None), sa.literal(INVALID)),
        (duplicate, sa.literal(DUPLICATE)),
        (suppressed, sa.literal(SUPPRESSED)),
        (s.c.Body.is_(None), sa.literal(NOT_RENDERED)),
        else_=sa.literal(PLANNED),
    )
    dup_reason = sa.case(
        (in_ledger, sa.literal("number already in this execution's ledger", sa.Unicode)),
        else_=sa.literal("duplicate of RPContactID ", sa.Unicode) + sa.cast(first_id, sa.Unicode(30)),
    )
    reason = sa.case(
        (s.c.ToNumber.is_(None), s.c.Reason),
        (duplicate, dup_reason),
        (suppressed, sa.literal("opted out of this sender", sa.Unicode)),
        (s.c.Body.is_(None), s.c.Reason),
        else_=sa.null(),
    )
    now = utcnow()
    source = sa.select(
        sa.literal(int(execution_id), sa.Integer).label("ChannelExecutionID"),
        s.c.RPContactID, s.c.IsSeed, s.c.AddressKey, s.c.ToNumber, s.c.Body, s.c.Segments, s.c.Encoding,
        outcome.label("Outcome"), reason.label("Reason"),
        sa.literal(now, sa.DateTime).label("UpdatedAt"), sa.literal(run_id, sa.Unicode(64)).label("RunID"),
    )
    with db.begin() as conn:
        return db.insert_missing(conn, led, source, match=["ChannelExecutionID", "RPContactID"])


def _suppress_planned(db: Database, channel: Channel, execution_id: int) -> int:
    """Planned rows whose number opted out since the plan was made are not sent."""
    led = db.tables.ledger
    with db.begin() as conn:
        res = conn.execute(
            led.update()
            .where(led.c.ChannelExecutionID == execution_id, led.c.Outcome == PLANNED,
                   led.c.ToNumber.in_(suppressed_numbers(db, channel)))
            .values(Outcome=SUPPRESSED, Reason="opted out of this sender after the plan was made", UpdatedAt=utcnow())
        )
    return max(res.rowcount or 0, 0)


def plan_execution(db: Database, channel: Channel, execution_id: int, *, run_id: str, log,
                   chunk_rows: int = CHUNK_ROWS) -> PlanSummary:
    """Plan the execution into the send ledger (idempotent) and report the guide's dedupe counts."""
    execution_id = int(execution_id)
    problem = sender_problem(channel)
    if problem:
        raise OutboundInputError(f"execution {execution_id}: {problem}")
    row = read_execution(db, execution_id)
    if row is None:
        raise OutboundInputError(f"execution {execution_id} does not exist in SMS_ChannelExecutions")
    renderer = _Renderer(row.message_body, channel, row.media_url)
    problem = execution_problem(row.message_body, row.media_url) or renderer.static_problem
    if problem:  # nobody could get a sensible text: the execution fails, nobody is planned
        reason = f"execution {execution_id}: {problem}"
        mark_failed(db, execution_id, reason)
        raise OutboundInputError(reason)
    ilog = InteractionLog(log, channel.name)
    db.drop_orphan_staging()
    set_status(db, execution_id, STATUS_SENDING)
    ilog.deduplicating()

    newly_suppressed = _suppress_planned(db, channel, execution_id)
    query = _contacts_query(db, execution_id, with_attributes=bool(renderer.fields))
    with db.staging_table("plan", _staging_columns()) as stg:
        staged, repeats = _stage_contacts(db, stg, query, renderer, channel.default_region, chunk_rows)
        seeds = [] if _has_seed_rows(db, execution_id) else _seed_rows(channel, renderer, ilog)
        if seeds:
            with db.begin() as conn:
                db.bulk_insert(conn, stg, seeds)
        newly = 0
        if staged or seeds:
            with db.begin() as conn:
                sa.Index(f"ix_{stg.name}_to", stg.c.ToNumber, stg.c.IsSeed, stg.c.RPContactID).create(conn)
            newly = _merge_into_ledger(db, channel, execution_id, stg, run_id)

    counts = ledger_counts(db, execution_id)
    people, seed = counts.people, counts.seeds
    repeated = repeated_rows(db, execution_id, people.total)
    summary = PlanSummary(
        execution_id=execution_id, channel=channel.name,
        count_before_dedup=people.total + repeated, count_after_dedup=people.total - people.get(DUPLICATE),
        duplicates=people.get(DUPLICATE) + repeated, invalid_numbers=people.get(INVALID),
        unsubscribed=people.get(SUPPRESSED), not_rendered=people.get(NOT_RENDERED),
        to_send=people.get(PLANNED), already_attempted=people.attempted,
        seeds=seed.total, seeds_to_send=seed.get(PLANNED), invalid_seeds=seed.get(INVALID),
        unsubscribed_seeds=seed.get(SUPPRESSED), newly_planned=newly, newly_suppressed=newly_suppressed,
        segments_to_send=counts.planned_segments, ucs2_messages=counts.planned_ucs2,
    )
    ilog.counts_before_after(summary.count_before_dedup, summary.duplicates)
    if summary.ucs2_messages and renderer.ucs2_example:
        rid, ch = renderer.ucs2_example
        who = f"seed {SEED_ID_BASE - rid}" if rid < SEED_ID_BASE else f"RPContactID {rid}"
        ilog.warning(
            f"{summary.ucs2_messages} message(s) go out in UCS-2 (70 characters per segment instead of 160): "
            f"e.g. {who}'s has {ch!r} (U+{ord(ch):04X}), which GSM-7 cannot carry"
        )
    if repeats:
        ilog.warning(f"{repeats} row(s) repeat an RPContactID already in the audience: counted as Duplicates; "
                     "per contact the row kept has a valid number, then the lowest AddressKey, then Attributes")
    if newly_suppressed:
        ilog.info(f"{newly_suppressed} planned recipient(s) opted out since the plan was made and are not sent")
    if summary.not_rendered:
        ilog.warning(f"{summary.not_rendered} recipient(s) not rendered (missing or unusable merge field, invalid "
                     "characters, empty or over-long body)")
    ilog.committing_offer_history()
    summary.interaction_log = ilog.text()
    return summary


def _read_sql(query, conn, chunksize: int):
    """pandas' chunked read (pandas imported here, on first use)."""
    import pandas as pd

    return pd.read_sql(query, conn, chunksize=chunksize)
