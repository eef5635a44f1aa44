"""Keyword parse (the guide's inbound steps 7-13): the channel's unparsed inbound replies.

Reads `TwilioSMS_Inbound` rows with ParsedAt NULL (listed by the suppression refresh), normalises each
body (one word, case-insensitive, trimmed: Twilio's opt-out/opt-in/help keywords and the channel's
own; anything else is free text, counted but not a keyword), merges opt-out/opt-in activity into
`TwilioSMS_Suppression` and turns each keyword reply into a pending `Replied` state on the offer
history of the execution(s) that messaged the replying number from this channel before the reply:

* `reply_attribution: latest` - only the most recent such execution (the guide's limitation 6 fixed);
* `all` - every such execution within the retrieval period (the guide's behaviour).

"Which execution messaged a number" comes from the send ledger (Outcome 'sent'), which outlives the
retirement of SIDs. Pending replies, suppression rows and ParsedAt are written in one transaction:
a reply is never attributed twice nor lost.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from twilio_pipeline.channels import Channel
from twilio_pipeline.db import Database
from twilio_pipeline.db.schema import PHONE, SID
from twilio_pipeline.inbound.common import (
    CHUNK_ROWS,
    inbound_scope,
    serialize_writers,
    staging,
    utc_now,
)
from twilio_pipeline.logs import Log
from twilio_pipeline.rules.keywords import keyword_class, normalise_keyword
from twilio_pipeline.rules.states import REPLIED
from twilio_pipeline.summary import Summary
from twilio_pipeline.suppression import merge_suppression_from


def _reply_columns() -> list[sa.Column]:
    return [
        sa.Column("MessageSID", SID, nullable=False),
        sa.Column("FromNumber", PHONE),
        sa.Column("ToNumber", PHONE),
        sa.Column("MessagingServiceID", SID),
        sa.Column("Keyword", sa.Unicode(50)),
        sa.Column("DateSent", sa.DateTime),
        sa.Column("WindowStart", sa.DateTime),
    ]


@dataclass
class KeywordSummary(Summary):
    attribution: str = "latest"
    parsed: int = 0
    keywords: int = 0
    free_text: int = 0
    opt_outs: int = 0
    opt_ins: int = 0
    helps: int = 0
    channel_keywords: int = 0
    replies_attributed: int = 0
    unattributed: int = 0
    new_suppression: int = 0
    waiting: int = 0


def parse_keywords(db: Database, channel: Channel, *, log: Log, limit_records: int | None = None,
                   now: datetime | None = None, peers: Sequence[Channel] = ()) -> KeywordSummary:
    """Parse the channel's unparsed inbound replies (oldest first, at most `limit_records`).

    `peers`: the other channels sending from the same sender (ChannelFile.sharing_sender). Their
    keywords are recognised and their executions are candidates too, so whichever of these channels
    parses a reply first attributes it as the others would: to the execution that messaged the number
    last, whatever its channel."""
    now = utc_now(now)
    keywords = tuple(dict.fromkeys([*channel.keywords, *(k for peer in peers for k in peer.keywords)]))
    names = [channel.name, *(peer.name for peer in peers)]
    ib = db.tables.inbound
    summary = KeywordSummary(attribution=channel.reply_attribution)
    retrieval = timedelta(days=channel.retrieval_period_days)
    unparsed = sa.and_(ib.c.ParsedAt.is_(None), inbound_scope(db, channel))
    query = (
        sa.select(ib.c.MessageSID, ib.c.FromNumber, ib.c.ToNumber, ib.c.MessagingServiceID, ib.c.Body, ib.c.DateSent)
        .where(unparsed).order_by(ib.c.DateSent, ib.c.MessageSID)
    )
    if limit_records is not None:
        query = query.limit(limit_records)
    classes: Counter[str] = Counter()
    staged = False
    with staging(db, "replies", _reply_columns(), ("FromNumber",), ("MessageSID",)) as stg:
        with db.connect() as read:
            result = read.execution_options(stream_results=True, yield_per=CHUNK_ROWS).execute(query)
            for part in result.partitions(CHUNK_ROWS):
                rows = []
                for r in part:
                    rows.append({
                        "MessageSID": r.MessageSID, "FromNumber": r.FromNumber, "ToNumber": r.ToNumber,
                        "MessagingServiceID": r.MessagingServiceID,
                        "Keyword": normalise_keyword(r.Body, keywords), "DateSent": r.DateSent,
                        "WindowStart": None if r.DateSent is None else r.DateSent - retrieval,
                    })
                with db.begin() as conn:
                    db.bulk_insert(conn, stg, rows)
                staged = True
        if staged:
            with db.begin() as conn:
                serialize_writers(db, conn, f"parse:{channel.sender}")
                serialize_writers(db, conn, "states")  # never interleaved with a load draining pending rows
                # An overlapping parse may have taken some of these rows meanwhile: drop them here.
                taken = sa.select(sa.literal(1)).select_from(ib).where(
                    ib.c.MessageSID == stg.c.MessageSID, ib.c.ParsedAt.is_not(None))
                conn.execute(stg.delete().where(taken.exists()))
                for keyword, n in conn.execute(sa.select(stg.c.Keyword, sa.func.count()).group_by(stg.c.Keyword)):
                    classes[keyword_class(keyword) or "free_text"] += n
                    summary.parsed += n
                summary.replies_attributed, summary.unattributed = _attribute(db, conn, channel, names, stg, now)
                summary.new_suppression = sum(merge_suppression_from(db, conn, stg, channel.account_key))
                keyword_of = sa.select(stg.c.Keyword).where(stg.c.MessageSID == ib.c.MessageSID).scalar_subquery()
                conn.execute(
                    ib.update().where(ib.c.MessageSID.in_(sa.select(stg.c.MessageSID)))
                    .values(ParsedAt=now, Keyword=keyword_of)
                )
    summary.opt_outs, summary.opt_ins = classes["opt_out"], classes["opt_in"]
    summary.helps, summary.channel_keywords = classes["help"], classes["custom"]
    summary.free_text = classes["free_text"]
    summary.keywords = summary.opt_outs + summary.opt_ins + summary.helps + summary.channel_keywords
    if limit_records is not None:
        with db.connect() as conn:
            summary.waiting = conn.execute(sa.select(sa.func.count()).select_from(ib).where(unparsed)).scalar() or 0
    log.info(
        f"keyword parse for {channel.sender}: {summary.parsed} reply(ies), {summary.keywords} keyword(s) "
        f"({summary.opt_outs} opt-out, {summary.opt_ins} opt-in, {summary.helps} help, "
        f"{summary.channel_keywords} channel keyword), {summary.free_text} free text; "
        f"{summary.replies_attributed} Replied state(s) pending ({channel.reply_attribution}), "
        f"{summary.unattributed} keyword reply(ies) matched no execution"
        + (f"; {summary.waiting} wait for the next sync" if summary.waiting else "")
    )
    return summary


def _attribute(db: Database, conn, channel: Channel, names: Sequence[str], stg: sa.Table, now: datetime
               ) -> tuple[int, int]:
    """Pending Replied states for the staged keyword replies; returns (rows, replies with no execution).

    A candidate is a ledger row of a channel in `names` (this one and those sharing its sender;
    Outcome 'sent', not a seed) to the replying number,
    sent at or before the reply and within the retrieval period. Send time is Twilio's (StatusAt)
    where known, so it compares with the reply's date_sent on one clock.
    """
    led, ex, pending = db.tables.ledger, db.tables.executions, db.tables.pending_states
    sent_at = sa.func.coalesce(led.c.StatusAt, led.c.AttemptedAt)
    candidates = (
        sa.select(
            stg.c.MessageSID, led.c.ChannelExecutionID, led.c.RPContactID, stg.c.Keyword, stg.c.DateSent,
            sa.func.row_number().over(
                partition_by=stg.c.MessageSID,
                order_by=(sent_at.desc(), led.c.ChannelExecutionID.desc()),
            ).label("rn"),
        )
        .select_from(
            stg.join(led, led.c.ToNumber == stg.c.FromNumber)
            .join(ex, ex.c.ChannelExecutionID == led.c.ChannelExecutionID)
        )
        .where(
            stg.c.Keyword.is_not(None), stg.c.DateSent.is_not(None),
            ex.c.ChannelName.in_(list(names)), led.c.Outcome == "sent", led.c.IsSeed == sa.false(),
            sent_at <= stg.c.DateSent, sent_at >= stg.c.WindowStart,
        )
        .subquery("candidates")
    )
    c = candidates
    chosen = sa.select(
        c.c.ChannelExecutionID, c.c.RPContactID, sa.literal(REPLIED, sa.Unicode(40)).label("FulfillmentState"),
        c.c.Keyword.label("EventName"), c.c.DateSent.label("Timestamp"), c.c.MessageSID.label("InboundSID"),
        sa.literal(now, sa.DateTime).label("ObservedAt"),
    )
    if channel.reply_attribution == "latest":
        chosen = chosen.where(c.c.rn == 1)
    cols = ["ChannelExecutionID", "RPContactID", "FulfillmentState", "EventName", "Timestamp", "InboundSID",
            "ObservedAt"]
    inserted = conn.execute(pending.insert().from_select(cols, chosen)).rowcount or 0
    attributed = sa.select(pending.c.InboundSID).where(pending.c.InboundSID == stg.c.MessageSID)
    unattributed = conn.execute(
        sa.select(sa.func.count()).select_from(stg)
        .where(stg.c.Keyword.is_not(None), ~attributed.exists())
    ).scalar() or 0
    return max(inserted, 0), unattributed
