"""Suppression refresh: list the sender's inbound messages once, keep them, merge opt-outs/opt-ins.

The guide's outbound step 2 and inbound steps 9-13. Every inbound message listed is kept in
`TwilioSMS_Inbound` (merged on MessageSID), so the keyword parse of the channel sync reads the same
rows and no reply is lost between the two. The listing starts at the sender's watermark minus a small
overlap (the first refresh reads back `retrieval_period_days`), pages stream into a staging table,
and one transaction merges them and only then advances the watermark: a failed load re-lists.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from twilio_pipeline.channels import Channel
from twilio_pipeline.db import Database
from twilio_pipeline.db.schema import PHONE, SID
from twilio_pipeline.inbound.common import Summary, naive, same_account, serialize_writers, twilio_time, utc_now
from twilio_pipeline.logs import Log
from twilio_pipeline.rules.keywords import (
    HELP_KEYWORDS,
    OPT_IN_KEYWORDS,
    OPT_OUT_KEYWORDS,
    normalise_keyword,
)
from twilio_pipeline.rules.render import storable
from twilio_pipeline.twilio import TwilioClient

# Re-listed before the watermark: a message Twilio shows a little late is still caught; the merge on
# MessageSID makes the re-read harmless.
LISTING_OVERLAP = timedelta(minutes=5)
SUPPRESSION_MATCH = ("PhoneNumber", "ActivityDate", "TwilioNumber", "Activity", "Account")
ACCOUNT = sa.Unicode(64)
_UNION_CHUNK = 200  # SQLite allows 500 terms in one compound SELECT


def inbound_staging_columns() -> list[sa.Column]:
    return [
        sa.Column("MessageSID", SID, nullable=False),
        sa.Column("FromNumber", PHONE),
        sa.Column("ToNumber", PHONE),
        sa.Column("MessagingServiceID", SID),
        sa.Column("Body", sa.UnicodeText),
        sa.Column("Keyword", sa.Unicode(50)),
        sa.Column("DateSent", sa.DateTime),
        sa.Column("Account", ACCOUNT),
    ]


@dataclass
class RefreshSummary(Summary):
    sender: str = ""
    since: datetime | None = None
    pool_numbers: int = 0
    listed: int = 0
    inbound: int = 0
    new_inbound: int = 0
    keywords: int = 0
    free_text: int = 0
    opt_outs: int = 0
    opt_ins: int = 0
    helps: int = 0
    api_calls: int = 0
    watermark: datetime | None = None


def inbound_row(msg: Mapping, channel: Channel) -> dict | None:
    """A listed message -> a TwilioSMS_Inbound row (None for outbound messages or no SID)."""
    sid = msg.get("sid")
    direction = msg.get("direction")
    if not isinstance(sid, str) or not sid or direction not in (None, "inbound"):
        return None
    service = msg.get("messaging_service_sid")
    if channel.uses_service and not service:
        service = channel.messaging_service_sid
    body = msg.get("body")
    body = storable(body) if isinstance(body, str) else body  # a NUL in one reply must not stop every sync
    return {
        "MessageSID": sid,
        "FromNumber": msg.get("from"),
        "ToNumber": msg.get("to"),
        "MessagingServiceID": service,
        "Body": body,
        "Keyword": normalise_keyword(body, channel.keywords),
        # An unreadable date_sent must not hide a readable date_created.
        "DateSent": twilio_time(msg.get("date_sent")) or twilio_time(msg.get("date_created")),
        "Account": channel.account_key,
    }


def watermark_key(channel: Channel) -> str:
    """The sender, qualified by the channel's named account: the same number on two (sub)accounts has two
    inboxes, each read from its own watermark. The deployment's own account keeps the plain sender."""
    return channel.sender if channel.account_key is None else f"{channel.sender}@{channel.account_key}"


def receiving_senders(client: TwilioClient, channel: Channel) -> list[str]:
    """Where the channel's replies arrive: its from_number, or every sender of its Messaging Service that
    can receive (phone numbers and short codes; alphanumeric sender IDs are one-way)."""
    if not channel.uses_service:
        return [channel.from_number]  # type: ignore[list-item]
    return client.list_service_receiving_senders(channel.messaging_service_sid)


def refresh_inbound(db: Database, client: TwilioClient, channel: Channel, *, log: Log,
                    now: datetime | None = None, overlap: timedelta = LISTING_OVERLAP) -> RefreshSummary:
    """List the sender's inbound messages newer than its watermark, keep them and merge the
    opt-out/opt-in activity into TwilioSMS_Suppression; advance the watermark after the commit."""
    now = utc_now(now)
    sender = channel.sender
    key = watermark_key(channel)
    summary = RefreshSummary(sender=sender)
    calls_before = client.request_count
    with db.connect() as conn:
        watermark = db.get_watermark(conn, key)
    floor = now - timedelta(days=channel.retrieval_period_days)
    since = floor if watermark is None else max(floor, watermark - overlap)
    summary.since = since

    numbers = receiving_senders(client, channel)
    if channel.uses_service:
        summary.pool_numbers = len(numbers)

    latest: datetime | None = None
    with db.staging_table("inbound", inbound_staging_columns()) as stg:
        for number in numbers:
            for page in client.iter_message_pages(to=number, date_sent_after=since):
                summary.listed += len(page)
                rows = []
                for msg in page:
                    row = inbound_row(msg, channel)
                    if row is None:
                        continue
                    rows.append(row)
                    if row["DateSent"] is None:
                        # No readable date: keep the reply all the same (a STOP must never be lost: opt-outs
                        # and attribution need a date), dated by date_updated or when it was fetched. Such a
                        # date is a stand-in, so it never moves the watermark.
                        row["DateSent"] = twilio_time(msg.get("date_updated")) or now
                    elif latest is None or row["DateSent"] > latest:
                        latest = row["DateSent"]
                    if row["Keyword"] is None:
                        summary.free_text += 1
                    else:
                        summary.keywords += 1
                if rows:
                    with db.begin() as conn:
                        db.bulk_insert(conn, stg, rows)
                    summary.inbound += len(rows)
        with db.begin() as conn:
            serialize_writers(db, conn, "inbound")  # one MessageSID may be listed by two senders' refreshes
            if channel.uses_service:
                record_service_numbers(db, conn, channel.messaging_service_sid, numbers, now)
            summary.new_inbound = merge_inbound(db, conn, stg, now)
            counts = merge_suppression_from(db, conn, stg, channel.account_key)
            summary.opt_outs, summary.opt_ins, summary.helps = counts
            if latest is not None:
                db.set_watermark(conn, key, latest)
    with db.connect() as conn:
        summary.watermark = db.get_watermark(conn, key)
    summary.api_calls = client.request_count - calls_before
    log.info(
        f"suppression refresh for {sender}: listed {summary.listed} message(s) since {since:%Y-%m-%d %H:%M:%S} "
        f"({summary.new_inbound} new inbound, {summary.keywords} keyword, {summary.free_text} free text); "
        f"{summary.opt_outs} new opt-out(s), {summary.opt_ins} new opt-in(s); {summary.api_calls} API call(s)"
    )
    return summary


def record_service_numbers(db: Database, conn: Connection, service_sid: str, numbers: Iterable[str],
                           now: datetime) -> None:
    """Remember the pool's receiving senders, numbers and short codes (never forgotten: a STOP to a former
    pool sender still counts)."""
    sn = db.tables.service_numbers
    existing = {r[0] for r in conn.execute(sa.select(sn.c.PhoneNumber).where(sn.c.ServiceSID == service_sid))}
    new = [{"ServiceSID": service_sid, "PhoneNumber": n, "SeenAt": now} for n in dict.fromkeys(numbers)
           if n not in existing]
    if new:
        conn.execute(sn.insert(), new)


def merge_inbound(db: Database, conn: Connection, stg: sa.Table, now: datetime) -> int:
    """INSERT the staged messages not yet kept (a message listed twice in one run counts once)."""
    cols = [c.name for c in stg.columns if c.name != "MessageSID"]
    source = (
        sa.select(stg.c.MessageSID, *[sa.func.max(stg.c[c]).label(c) for c in cols],
                  sa.literal(now, sa.DateTime).label("FetchedAt"))
        .group_by(stg.c.MessageSID)
    )
    return db.insert_missing(conn, db.tables.inbound, source, match=["MessageSID"])


def merge_suppression_from(db: Database, conn: Connection, stg: sa.Table,
                           account: str | None) -> tuple[int, int, int]:
    """Opt-out, opt-in and help replies of the staged messages -> TwilioSMS_Suppression (new rows per class),
    recorded for `account` (the channel's `account_key`: whose sender they were sent to).

    The activity is dated as the message was first kept in TwilioSMS_Inbound, so a reply whose date had to
    be stood in for gets the same date however often it is listed again."""
    ib = db.tables.inbound
    kept = sa.select(ib.c.DateSent).where(ib.c.MessageSID == stg.c.MessageSID).scalar_subquery()
    counts = []
    for words in (OPT_OUT_KEYWORDS, OPT_IN_KEYWORDS, HELP_KEYWORDS):
        source = (
            sa.select(
                stg.c.FromNumber.label("PhoneNumber"),
                sa.func.coalesce(kept, stg.c.DateSent).label("ActivityDate"),
                stg.c.MessagingServiceID.label("MessagingServiceID"),
                stg.c.ToNumber.label("TwilioNumber"),
                stg.c.Keyword.label("Activity"),
                sa.literal(account, ACCOUNT).label("Account"),
            )
            .where(stg.c.Keyword.in_(words), stg.c.FromNumber.is_not(None), stg.c.DateSent.is_not(None))
            .distinct()
        )
        counts.append(db.insert_missing(conn, db.tables.suppression, source, match=SUPPRESSION_MATCH))
    return counts[0], counts[1], counts[2]


def suppressed_numbers(db: Database, channel: Channel) -> sa.Select:
    """Numbers whose latest opt-out/opt-in activity for this sender is an opt-out (one column, PhoneNumber).

    The sender is the from_number, or the Messaging Service (its SID, or any number of its pool):
    Twilio opts a recipient out of the whole service when they reply STOP to one of its numbers. On a
    tie in ActivityDate the opt-out wins, since a lost STOP is a legal defect and an extra one is not.
    """
    s = db.tables.suppression
    if channel.uses_service:
        sn = db.tables.service_numbers
        pool = sa.select(sn.c.PhoneNumber).where(sn.c.ServiceSID == channel.messaging_service_sid)
        scope = sa.or_(s.c.MessagingServiceID == channel.messaging_service_sid, s.c.TwilioNumber.in_(pool))
    else:
        scope = s.c.TwilioNumber == channel.from_number
    # An opt-out belongs to the account whose sender received it: the same number on another account is
    # another sender, and Twilio keeps their opt-outs apart too.
    scope = sa.and_(scope, same_account(s.c.Account, channel))
    is_out = s.c.Activity.in_(OPT_OUT_KEYWORDS)
    ranked = (
        sa.select(
            s.c.PhoneNumber,
            sa.case((is_out, 1), else_=0).label("IsOptOut"),
            sa.func.row_number().over(
                partition_by=s.c.PhoneNumber,
                order_by=(s.c.ActivityDate.desc(), sa.case((is_out, 0), else_=1)),
            ).label("rn"),
        )
        .where(scope, s.c.Activity.in_(OPT_OUT_KEYWORDS + OPT_IN_KEYWORDS))
        .subquery("latest_activity")
    )
    return sa.select(ranked.c.PhoneNumber).where(ranked.c.rn == 1, ranked.c.IsOptOut == 1)


def record_refusals_as_stop(db: Database, conn: Connection, channel: Channel, rows: Iterable[Mapping]) -> int:
    """Record sends refused (or failed) with 21610 as Activity STOP, in the caller's transaction.

    Each row needs the recipient (`ToNumber` or `PhoneNumber`) and when (`ActivityDate`, `AttemptedAt`
    or `Timestamp`); `TwilioNumber` defaults to the channel's from_number. Twilio only refuses with
    21610 after an opt-out we may not have listed yet (e.g. older than the retrieval period), so the
    refusal itself is the evidence. Returns the rows added.
    """
    records = []
    for row in rows:
        phone = row.get("ToNumber") or row.get("PhoneNumber")
        when = row.get("ActivityDate") or row.get("AttemptedAt") or row.get("Timestamp")
        if not phone or when is None:
            continue
        records.append({
            "PhoneNumber": phone,
            "ActivityDate": naive(when),
            "MessagingServiceID": row.get("MessagingServiceID") or channel.messaging_service_sid,
            "TwilioNumber": row.get("TwilioNumber") or channel.from_number,
            "Activity": "STOP",
            "Account": channel.account_key,
        })
    added = 0
    types = {"PhoneNumber": PHONE, "ActivityDate": sa.DateTime, "MessagingServiceID": SID,
             "TwilioNumber": PHONE, "Activity": sa.Unicode(20), "Account": ACCOUNT}
    for start in range(0, len(records), _UNION_CHUNK):
        part = records[start:start + _UNION_CHUNK]
        selects = [sa.select(*[sa.literal(r[c], types[c]).label(c) for c in types]) for r in part]
        source = sa.union(*selects) if len(selects) > 1 else selects[0]
        added += db.insert_missing(conn, db.tables.suppression, source.subquery("refusals"), match=SUPPRESSION_MATCH)
    return added
